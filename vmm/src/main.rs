//! cloudphone-vmm: runs one guest; exit codes per vmm/API.md.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

use cloudphone_vmm::api::{ApiServer, ApiTarget};
use cloudphone_vmm::boot::{memfd_with, BootError};
use cloudphone_vmm::config::{self, BootSource, OnReboot, RawConfig, VmConfig};
use cloudphone_vmm::exit::{failure_code, GuestExit, EXIT_CONFIG};
use cloudphone_vmm::jail;
use cloudphone_vmm::kvm;
use cloudphone_vmm::seccomp::{self, ThreadKind};
use cloudphone_vmm::snapshot;
use cloudphone_vmm::vm::{BootPayload, Vm, VmSource};

fn open(path: &Path, what: &'static str) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Read what the config boots: the kernel/initrd/cmdline (Android images are assembled into
/// memfds), or a snapshot's state file (checked against its memory file).
fn load_source(cfg: &mut VmConfig) -> anyhow::Result<VmSource> {
    if let BootSource::Snapshot { dir } = &cfg.boot {
        let snapshot = snapshot::load(dir).map_err(|e| BootError::Snapshot(e.to_string()))?;
        cfg.cpus = snapshot.vcpus.len() as u8;
        cfg.memory_mib = snapshot.memory_bytes >> 20;
        return Ok(VmSource::Restore {
            dir: dir.clone(),
            snapshot: Box::new(snapshot),
        });
    }
    load_payload(cfg).map(VmSource::Boot)
}

/// Read the kernel/initrd/cmdline the config names (Android images are assembled into memfds).
fn load_payload(cfg: &VmConfig) -> anyhow::Result<BootPayload> {
    match &cfg.boot {
        BootSource::Snapshot { dir } => Err(anyhow::anyhow!(
            "a guest restored from {} rebooted: it cannot boot again without a kernel; restore the snapshot again",
            dir.display()
        )),
        BootSource::Linux { kernel, initrd } => Ok(BootPayload {
            kernel: open(kernel, "--kernel")?,
            initrd: initrd.as_deref().map(|p| open(p, "--initrd")).transpose()?,
            cmdline: cfg.cmdline.clone(),
        }),
        BootSource::Android {
            boot,
            vendor_boot,
            init_boot,
        } => {
            let opts = android_images::loader::AndroidBootOptions {
                androidboot_on_cmdline: true,
                ..Default::default()
            };
            let p = android_images::loader::load_android_boot(
                boot,
                vendor_boot.as_deref(),
                init_boot.as_deref(),
                &opts,
            )
            .map_err(|e| BootError::Android(e.to_string()))?;
            let initrd = if p.initrd.is_empty() {
                None
            } else {
                Some(memfd_with(&p.initrd).context("staging the Android ramdisk")?)
            };
            Ok(BootPayload {
                kernel: memfd_with(&p.kernel).context("staging the Android kernel")?,
                initrd,
                cmdline: format!("{} {}", p.cmdline, cfg.cmdline).trim().to_string(),
            })
        }
    }
}

fn run(mut cfg: VmConfig) -> anyhow::Result<i32> {
    #[cfg(debug_assertions)]
    let probe = jail::probe::requested();
    // Input files are checked before KVM so a wrong path is reported as such everywhere.
    let mut source = load_source(&mut cfg)?;
    // KVM is opened before the jail: the jail has no /dev, and the phone's uid no kvm group.
    let kvm = kvm::open_kvm();
    if let Some(spec) = cfg.jail.clone() {
        jail::enter(&spec, &mut cfg, &mut source)?;
    }
    let mut first = Some(source);
    let target = Arc::new(ApiTarget::default());
    // From here on every thread (API, vCPUs, device workers, and the restart loop) runs under
    // the filter: the whole VM setup is on its list, so a reboot-restart works too. API and
    // vCPU threads stack their own, stricter filters on top.
    seccomp::install(cfg.seccomp)?;
    #[cfg(debug_assertions)]
    if let Some(probe) = probe {
        // The probe runs no guest, so it runs on hosts whose KVM cannot boot one too.
        return Ok(jail::probe::run(&probe, cfg.seccomp));
    }
    let kvm = kvm?;
    let api_filter = seccomp::thread_filter(ThreadKind::Api, cfg.seccomp)?;
    let _api = cfg
        .api_socket
        .as_deref()
        .map(|p| ApiServer::start(p, target.clone(), api_filter))
        .transpose()?;
    loop {
        let source = match first.take() {
            Some(s) => s,
            None => VmSource::Boot(load_payload(&cfg)?),
        };
        let mut vm = Vm::build(&kvm, &cfg, source)?;
        target.set(Some(vm.control()));
        vm.start(cfg.seccomp)?;
        let reason = vm.wait();
        target.set(None);
        tracing::info!(?reason, code = reason.code(), "guest stopped");
        if reason == GuestExit::Reboot && cfg.on_reboot == OnReboot::Restart {
            tracing::info!("--on-reboot restart: booting again");
            continue;
        }
        return Ok(reason.code());
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,cloudphone_vmm=info".into()),
        )
        .init();
    // A panic's message and location only: std's hook would resolve a backtrace when
    // RUST_BACKTRACE is set, opening the executable, which vCPU threads' filter refuses.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        eprintln!("cloudphone-vmm: thread '{name}' {info}");
    }));
    let cli = RawConfig::parse();
    let merged = match &cli.config {
        Some(path) => config::read_config_file(path).map(|file| cli.clone().over(file)),
        None => Ok(cli),
    };
    let cfg = match merged.and_then(RawConfig::validate) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cloudphone-vmm: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let code = match run(cfg) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloudphone-vmm: {e:#}");
            failure_code(&e)
        }
    };
    std::process::exit(code);
}
