//! The command line (clap) and the equivalent JSON config file (serde), merged and validated
//! into a [`VmConfig`].

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::legacy::SerialOutput;

mod devices;
pub use devices::{DeviceArgs, DeviceConfig, MAX_DISKS};

/// Most vCPUs a phone may have.
pub const MAX_VCPUS: u8 = 64;

/// Raw options, as typed or as read from `--config` (every field optional so the two merge).
#[derive(Parser, Deserialize, Debug, Default, Clone, PartialEq)]
#[command(
    name = "cloudphone-vmm",
    about = "Runs one cloudphone guest under KVM",
    version
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Kernel image (bzImage or ELF vmlinux).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Android boot.img (kernel + ramdisk + cmdline) instead of --kernel/--initrd.
    #[arg(long)]
    pub boot_img: Option<PathBuf>,
    /// Android vendor_boot.img (with --boot-img).
    #[arg(long)]
    pub vendor_boot: Option<PathBuf>,
    /// Android init_boot.img (with --boot-img).
    #[arg(long)]
    pub init_boot: Option<PathBuf>,
    /// Kernel command line (default "console=ttyS0").
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Resume the snapshot in this directory (written by `PUT /snapshot`) instead of booting;
    /// vCPUs, RAM and the guest's state come from it.
    #[arg(long)]
    pub restore: Option<PathBuf>,
    /// Number of vCPUs, 1..=64 (default 1).
    #[arg(long)]
    pub cpus: Option<u64>,
    /// Guest memory in MiB, 64..=host RAM (default 512).
    #[arg(long)]
    pub memory: Option<u64>,
    /// Back guest RAM with a shared memfd (for handing it to another process) instead of
    /// private anonymous memory with transparent huge pages (the faster default).
    #[arg(long)]
    #[serde(default)]
    pub shared_memory: bool,
    /// Offer guest RAM to KSM (MADV_MERGEABLE): pages identical across phones are merged
    /// once the host runs ksmd (/sys/kernel/mm/ksm/run = 1). Also with --restore.
    #[arg(long)]
    #[serde(default)]
    pub mergeable: bool,
    /// Disk: path[,ro][,overlay=path][,id=NAME] (repeatable).
    #[arg(long)]
    #[serde(default)]
    pub disk: Vec<String>,
    /// Network: tap=NAME[,mac=..] (repeatable).
    #[arg(long)]
    #[serde(default)]
    pub net: Vec<String>,
    /// vsock: cid=N,uds=PATH.
    #[arg(long)]
    pub vsock: Option<String>,
    /// GPU: width=W,height=H[,dpi=D].
    #[arg(long)]
    pub gpu: Option<String>,
    /// Input devices: touch,keyboard.
    #[arg(long)]
    pub input: Option<String>,
    /// Per-VM API Unix socket path.
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Serial console: stdout | file:PATH | none (default stdout).
    #[arg(long)]
    pub serial: Option<String>,
    /// virtio-console port: port=N,path=FILE|socket=PATH|stdout|none (repeatable).
    #[arg(long)]
    #[serde(default)]
    pub console: Vec<String>,
    /// Add a virtio-rng device.
    #[arg(long)]
    #[serde(default)]
    pub rng: bool,
    /// Add a virtio-balloon device.
    #[arg(long)]
    #[serde(default)]
    pub balloon: bool,
    /// What a guest reboot does: exit (code 32) or restart.
    #[arg(long)]
    pub on_reboot: Option<String>,
    /// System-call filter: enforce (default; a call outside the VMM's list stops it, exit 35),
    /// log (allow and log it to the kernel audit log) or off.
    #[arg(long)]
    pub seccomp: Option<String>,
    /// Run jailed: root=DIR[,uid=N,gid=N][,shm=DIR][,cgroup=DIR] (vmm/API.md, "Jail"). DIR
    /// becomes the VMM's `/`; uid/gid (as root) are the phone's own ids.
    #[arg(long)]
    pub jail: Option<String>,
    /// Read options from this JSON file; command-line options override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// Where the kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSource {
    /// `--kernel` (+ `--initrd`).
    Linux {
        /// Kernel path.
        kernel: PathBuf,
        /// Initrd path.
        initrd: Option<PathBuf>,
    },
    /// `--restore DIR`: resume a snapshot.
    Snapshot {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// `--boot-img` (+ vendor/init boot).
    Android {
        /// boot.img.
        boot: PathBuf,
        /// vendor_boot.img.
        vendor_boot: Option<PathBuf>,
        /// init_boot.img.
        init_boot: Option<PathBuf>,
    },
}

/// Reboot policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReboot {
    /// Exit with code 32.
    Exit,
    /// Boot the guest again in the same process.
    Restart,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// Kernel source.
    pub boot: BootSource,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// How guest RAM is backed on the host.
    pub memory_backing: crate::memory::MemoryBacking,
    /// Offer guest RAM to KSM ([`crate::memory::advise_mergeable`]).
    pub mergeable: bool,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// API socket.
    pub api_socket: Option<PathBuf>,
    /// Reboot policy.
    pub on_reboot: OnReboot,
    /// System-call filter.
    pub seccomp: crate::seccomp::SeccompMode,
    /// Add virtio-rng at 00:05.0.
    pub rng: bool,
    /// virtio-console ports at 00:01.0 (port N is the guest's hvcN); empty: no console.
    pub console_ports: Vec<cloudphone_virtio::console::PortConfig>,
    /// GPU, input, disks, net, vsock, balloon.
    pub devices: DeviceConfig,
    /// The per-phone jail to enter before the guest runs (`--jail`).
    pub jail: Option<crate::jail::JailSpec>,
}

/// A configuration problem (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// Largest config file we read.
const MAX_CONFIG_FILE: u64 = 1 << 20;

/// Read a JSON config file (same field names as the long options).
pub fn read_config_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError(format!("cannot read --config {}: {e}", path.display())))?;
    if meta.len() > MAX_CONFIG_FILE {
        return err(format!(
            "--config {} is {} bytes; config files are limited to 1 MiB",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read --config {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| ConfigError(format!("--config {} is not valid: {e}", path.display())))
}

impl RawConfig {
    /// Options from `self` (the command line) override `base` (the file).
    pub fn over(self, base: RawConfig) -> RawConfig {
        fn vec(a: Vec<String>, b: Vec<String>) -> Vec<String> {
            if a.is_empty() {
                b
            } else {
                a
            }
        }
        RawConfig {
            kernel: self.kernel.or(base.kernel),
            initrd: self.initrd.or(base.initrd),
            boot_img: self.boot_img.or(base.boot_img),
            vendor_boot: self.vendor_boot.or(base.vendor_boot),
            init_boot: self.init_boot.or(base.init_boot),
            cmdline: self.cmdline.or(base.cmdline),
            restore: self.restore.or(base.restore),
            cpus: self.cpus.or(base.cpus),
            memory: self.memory.or(base.memory),
            shared_memory: self.shared_memory || base.shared_memory,
            mergeable: self.mergeable || base.mergeable,
            disk: vec(self.disk, base.disk),
            net: vec(self.net, base.net),
            vsock: self.vsock.or(base.vsock),
            gpu: self.gpu.or(base.gpu),
            input: self.input.or(base.input),
            api_socket: self.api_socket.or(base.api_socket),
            serial: self.serial.or(base.serial),
            console: vec(self.console, base.console),
            rng: self.rng || base.rng,
            balloon: self.balloon || base.balloon,
            on_reboot: self.on_reboot.or(base.on_reboot),
            seccomp: self.seccomp.or(base.seccomp),
            jail: self.jail.or(base.jail),
            config: None,
        }
    }

    /// Check ranges and combinations.
    pub fn validate(self) -> Result<VmConfig, ConfigError> {
        if self.mergeable && self.shared_memory {
            return err(
                "--mergeable cannot be combined with --shared-memory: KSM merges only private memory",
            );
        }
        if self.restore.is_some() {
            let given = [
                ("--kernel", self.kernel.is_some()),
                ("--boot-img", self.boot_img.is_some()),
                ("--initrd", self.initrd.is_some()),
                ("--cmdline", self.cmdline.is_some()),
                ("--cpus", self.cpus.is_some()),
                ("--memory", self.memory.is_some()),
                ("--shared-memory", self.shared_memory),
            ];
            if let Some((name, _)) = given.iter().find(|(_, set)| *set) {
                return err(format!(
                    "{name} cannot be combined with --restore: the snapshot holds the guest's kernel, vCPUs and RAM"
                ));
            }
        }
        let boot = match (self.kernel, self.boot_img) {
            (None, None) if self.restore.is_some() => BootSource::Snapshot {
                dir: self.restore.clone().expect("checked"),
            },
            (Some(_), Some(_)) => return err("--kernel and --boot-img are exclusive: pass one"),
            (Some(kernel), None) => {
                if self.vendor_boot.is_some() || self.init_boot.is_some() {
                    return err("--vendor-boot/--init-boot need --boot-img");
                }
                BootSource::Linux {
                    kernel,
                    initrd: self.initrd,
                }
            }
            (None, Some(boot)) => {
                if self.initrd.is_some() {
                    return err("--initrd cannot be combined with --boot-img (the ramdisk comes from the images)");
                }
                BootSource::Android {
                    boot,
                    vendor_boot: self.vendor_boot,
                    init_boot: self.init_boot,
                }
            }
            (None, None) => return err("no kernel: pass --kernel PATH or --boot-img PATH"),
        };
        let cpus = self.cpus.unwrap_or(1);
        if !(1..=u64::from(MAX_VCPUS)).contains(&cpus) {
            return err(format!(
                "--cpus {cpus} is out of range: use 1..={MAX_VCPUS}"
            ));
        }
        let memory_mib = self.memory.unwrap_or(512);
        crate::memory::validate_size(memory_mib).map_err(|e| ConfigError(e.to_string()))?;
        let serial = match self.serial.as_deref().unwrap_or("stdout") {
            "stdout" => SerialOutput::Stdout,
            "none" => SerialOutput::None,
            s => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => SerialOutput::File(PathBuf::from(p)),
                _ => return err(format!("--serial {s:?}: use stdout, file:PATH or none")),
            },
        };
        let on_reboot = match self.on_reboot.as_deref().unwrap_or("exit") {
            "exit" => OnReboot::Exit,
            "restart" => OnReboot::Restart,
            s => return err(format!("--on-reboot {s:?}: use exit or restart")),
        };
        let seccomp = match self.seccomp.as_deref() {
            None => crate::seccomp::SeccompMode::default(),
            Some(s) => s.parse().map_err(ConfigError)?,
        };
        let devices = DeviceConfig::parse(DeviceArgs {
            gpu: self.gpu.as_deref(),
            input: self.input.as_deref(),
            disk: &self.disk,
            net: &self.net,
            vsock: self.vsock.as_deref(),
            balloon: self.balloon,
        })?;
        let specs = self
            .console
            .iter()
            .map(|spec| {
                spec.parse::<cloudphone_virtio::console::ConsoleSpec>()
                    .map_err(|e| ConfigError(format!("--console {spec:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let console_ports = cloudphone_virtio::console::ports_from_specs(&specs)
            .map_err(|e| ConfigError(format!("--console: {e}")))?;
        Ok(VmConfig {
            boot,
            cmdline: self.cmdline.unwrap_or_else(|| "console=ttyS0".into()),
            cpus: cpus as u8,
            memory_mib,
            memory_backing: if self.shared_memory {
                crate::memory::MemoryBacking::SharedMemfd
            } else {
                crate::memory::MemoryBacking::Anonymous
            },
            mergeable: self.mergeable,
            serial,
            api_socket: self.api_socket,
            on_reboot,
            seccomp,
            rng: self.rng,
            console_ports,
            devices,
            jail: self
                .jail
                .as_deref()
                .map(|s| {
                    s.parse()
                        .map_err(|e| ConfigError(format!("--jail {s:?}: {e}")))
                })
                .transpose()?,
        })
    }
}

/// Parse `args` (including argv[0]) and any `--config` file into a validated config.
pub fn from_args<I, T>(args: I) -> Result<VmConfig, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = RawConfig::try_parse_from(args).map_err(|e| ConfigError(e.to_string()))?;
    let merged = match &cli.config {
        Some(path) => {
            let file = read_config_file(path)?;
            cli.over(file)
        }
        None => cli,
    };
    merged.validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<VmConfig, ConfigError> {
        from_args(std::iter::once("cloudphone-vmm").chain(args.iter().copied()))
    }

    #[test]
    fn minimal_and_defaults() {
        let c = parse(&["--kernel", "/k"]).unwrap();
        assert_eq!(c.cpus, 1);
        assert_eq!(c.memory_mib, 512);
        assert_eq!(c.serial, SerialOutput::Stdout);
        assert_eq!(c.on_reboot, OnReboot::Exit);
        let c = parse(&[
            "--kernel", "/k", "--serial", "file:/x", "--cpus", "4", "--memory", "128",
        ])
        .unwrap();
        assert_eq!(c.serial, SerialOutput::File("/x".into()));
        assert_eq!((c.cpus, c.memory_mib), (4, 128));
        let c = parse(&["--kernel", "/k", "--rng", "--console", "port=0,stdout"]).unwrap();
        assert!(c.rng);
        assert_eq!(c.console_ports.len(), 1);
        assert_eq!(c.devices, DeviceConfig::default());
        let c = parse(&[
            "--kernel",
            "/k",
            "--gpu",
            "width=720,height=1280",
            "--input",
            "touch,keyboard",
            "--disk",
            "/a.img",
            "--disk",
            "/b.img,ro",
            "--net",
            "tap=p0",
            "--vsock",
            "cid=3,uds=/tmp/v",
            "--balloon",
        ])
        .unwrap();
        assert_eq!(
            c.devices.gpu.map(|g| (g.width, g.height)),
            Some((720, 1280))
        );
        assert_eq!(c.devices.disks.len(), 2);
        assert!(c.devices.disks[1].read_only);
        assert!(c.devices.net.is_some() && c.devices.vsock.is_some() && c.devices.balloon);
        assert!(!c.mergeable);
        assert!(parse(&["--kernel", "/k", "--mergeable"]).unwrap().mergeable);
    }

    #[test]
    fn bad_values_rejected_with_reason() {
        for (args, needle) in [
            (&["--cpus", "0"][..], "--cpus 0"),
            (&["--cpus", "65"], "--cpus 65"),
            (&["--cpus", "99999999999999999999"], "cpus"),
            (&["--memory", "0"], "--memory 0"),
            (&["--memory", "63"], "--memory 63"),
            (&["--memory", "1099511627776"], "--memory"),
            (&["--serial", "tcp:1"], "--serial"),
            (&["--serial", "file:"], "--serial"),
            (&["--on-reboot", "maybe"], "--on-reboot"),
            (&["--disk", ",ro"], "--disk"),
            (&["--gpu", "width=720"], "--gpu"),
            (&["--input", "touch"], "--gpu"),
            (&["--console", "port=0"], "--console"),
            (&["--console", "port=0,bogus"], "--console"),
            (&["--mergeable", "--shared-memory"], "--mergeable"),
        ] {
            let mut full = vec!["--kernel", "/k"];
            full.extend_from_slice(args);
            let e = parse(&full).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
        assert!(parse(&[]).unwrap_err().to_string().contains("--kernel"));
        assert!(parse(&["--kernel", "/k", "--boot-img", "/b"]).is_err());
        assert!(parse(&["--kernel", "/k", "--vendor-boot", "/v"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }

    #[test]
    fn json_config_merges_under_cli() {
        let dir = std::env::temp_dir().join(format!("vmm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.json");
        std::fs::write(
            &path,
            r#"{"kernel":"/k","cpus":2,"memory":256,"cmdline":"console=ttyS0 quiet","api-socket":"/s","gpu":"width=100,height=200","disk":["/d.img"],"balloon":true}"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p]).unwrap();
        assert_eq!((c.cpus, c.memory_mib), (2, 256));
        assert_eq!(c.cmdline, "console=ttyS0 quiet");
        assert_eq!(c.api_socket, Some(PathBuf::from("/s")));
        assert_eq!(c.devices.gpu.map(|g| g.height), Some(200));
        assert_eq!(c.devices.disks[0].path, PathBuf::from("/d.img"));
        assert!(c.devices.balloon);
        let c = parse(&["--config", p, "--cpus", "3"]).unwrap();
        assert_eq!(c.cpus, 3);
        std::fs::write(&path, r#"{"kernel":"/k","cpu":2}"#).unwrap();
        assert!(parse(&["--config", p])
            .unwrap_err()
            .to_string()
            .contains("cpu"));
        std::fs::write(&path, "{not json").unwrap();
        assert!(parse(&["--config", p]).is_err());
        assert!(parse(&["--config", "/nonexistent/c.json"]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
