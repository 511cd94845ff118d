//! One `cloudphone-vmm` process per phone: its directory, command line, start, stop,
//! liveness, and re-adoption of VMMs that outlived an agent restart (via pid files).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cloudphone_vmm_api::VmmApi;

use crate::model::Profile;

/// Where and how the agent runs VMMs (from the command line).
#[derive(Debug, Clone)]
pub struct VmmConfig {
    pub vmm: PathBuf,
    pub boot: GuestBoot,
    pub cmdline: String,
    pub image_dir: PathBuf,
    pub qemu_img: PathBuf,
    pub state_dir: PathBuf,
    pub devices: Devices,
    /// The per-phone jail (`None`: `--no-jail`, for debugging only).
    pub jail: Option<super::jail::JailConfig>,
}

/// What phones boot: a plain kernel (+ initrd), or Android boot images the way a bootloader
/// would (the VMM assembles kernel, ramdisks, bootconfig and cmdline from them).
#[derive(Debug, Clone)]
pub enum GuestBoot {
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
    },
    Android {
        boot_img: PathBuf,
        vendor_boot: Option<PathBuf>,
    },
}

/// Which optional VMM devices phones get (all by default; fewer for VMM builds or tests
/// that lack them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices {
    pub gpu: bool,
    pub input: bool,
    pub rng: bool,
    /// virtio-balloon with free page reporting: what a guest frees returns to the host, and
    /// the agent can reclaim memory from idle phones when the host runs short.
    pub balloon: bool,
    /// Not a device: guest RAM offered to KSM (`cloudphone-vmm --mergeable`), so the host's
    /// ksmd merges pages identical across phones once an operator turns KSM on.
    pub ksm: bool,
    /// virtio-vsock with a host socket in the phone's directory ([`PhoneDir::vsock_socket`]):
    /// how `cloudphone adb` reaches the phone's adbd.
    pub vsock: bool,
}

impl Devices {
    /// Parses `gpu,input,rng,balloon,ksm,vsock` (any subset) or `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut d = Devices {
            gpu: false,
            input: false,
            rng: false,
            balloon: false,
            ksm: false,
            vsock: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "gpu" => d.gpu = true,
                "input" => d.input = true,
                "rng" => d.rng = true,
                "balloon" => d.balloon = true,
                "ksm" => d.ksm = true,
                "vsock" => d.vsock = true,
                "none" => {}
                other => {
                    return Err(format!(
                        "unknown device {other:?}: use gpu, input, rng, balloon, ksm, vsock or none"
                    ))
                }
            }
        }
        Ok(d)
    }
}

/// File name of a phone's hybrid vsock socket, beside its API socket: consumers that know
/// only the API socket (the relay, a local `serve`) find the vsock socket with
/// [`vsock_socket_beside`].
pub const VSOCK_SOCKET: &str = "vsock.sock";
/// Lowest guest CID handed out (0-2 are the hypervisor, loopback and the host).
const FIRST_GUEST_CID: u32 = 3;
/// Serialises CID choices, so two phones starting at once never pick the same one.
static CID_CHOICE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The vsock socket of the VMM whose API socket is `api_socket`.
pub fn vsock_socket_beside(api_socket: &Path) -> PathBuf {
    api_socket.with_file_name(VSOCK_SOCKET)
}

/// The guest CID of the phone in `dir`: the one it already has, else the lowest CID no other
/// phone directory under the state directory holds (unique per host, clones included, and
/// stable across the phone's restarts and an agent restart).
pub fn vsock_cid(cfg: &VmmConfig, dir: &PhoneDir) -> anyhow::Result<u32> {
    let _choosing = CID_CHOICE.lock().unwrap_or_else(|p| p.into_inner());
    let read = |path: &Path| -> Option<u32> {
        let cid = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        (cid >= FIRST_GUEST_CID).then_some(cid)
    };
    if let Some(cid) = read(&dir.cid_file()) {
        return Ok(cid);
    }
    let taken: std::collections::HashSet<u32> = std::fs::read_dir(cfg.state_dir.join("phones"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| read(&e.path().join("vsock.cid")))
        .collect();
    let cid = (FIRST_GUEST_CID..u32::MAX)
        .find(|c| !taken.contains(c))
        .context("no free vsock CID left")?;
    std::fs::write(dir.cid_file(), cid.to_string()).context("writing vsock.cid")?;
    Ok(cid)
}

/// The files of one phone on this host.
#[derive(Debug, Clone)]
pub struct PhoneDir {
    pub dir: PathBuf,
}

impl PhoneDir {
    /// `<state-dir>/phones/<phone id>` (the id is validated by the control service).
    pub fn new(cfg: &VmmConfig, phone_id: &str) -> Self {
        Self {
            dir: cfg.state_dir.join("phones").join(phone_id),
        }
    }
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }
    /// The VMM's hybrid vsock socket (`CONNECT <port>` reaches a guest port).
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join(VSOCK_SOCKET)
    }
    /// The guest CID this phone keeps for as long as its directory exists.
    fn cid_file(&self) -> PathBuf {
        self.dir.join("vsock.cid")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("vmm.pid")
    }
    pub fn overlay(&self) -> PathBuf {
        self.dir.join("overlay.qcow2")
    }
    pub fn generation_file(&self) -> PathBuf {
        self.dir.join("generation")
    }
    /// The generation the running VMM was booted for (survives agent restarts).
    pub fn generation(&self) -> Option<i64> {
        std::fs::read_to_string(self.generation_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// A running VMM: our child, or one adopted from a previous agent run.
pub enum Running {
    Child(tokio::process::Child),
    Adopted(i32),
}

impl Running {
    pub fn pid(&self) -> Option<i32> {
        match self {
            Running::Child(c) => c.id().map(|p| p as i32),
            Running::Adopted(p) => Some(*p),
        }
    }

    /// `Some(exit code)` once the process has ended (-1: killed by a signal or unknown).
    pub fn exited(&mut self) -> Option<i32> {
        match self {
            Running::Child(c) => match c.try_wait() {
                Ok(Some(st)) => Some(st.code().unwrap_or(-1)),
                Ok(None) => None,
                Err(_) => Some(-1),
            },
            Running::Adopted(pid) => (!alive(*pid)).then_some(-1),
        }
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// The VMM command line for a phone of `profile`: a cold boot, or with `restore` a clone of
/// that snapshot (same devices, this phone's own sockets, logs, overlay and vsock CID
/// `vsock_cid`, given when the vsock device is on).
pub fn command_line(
    cfg: &VmmConfig,
    profile: &Profile,
    dir: &PhoneDir,
    restore: Option<&Path>,
    vsock_cid: Option<u32>,
) -> Vec<String> {
    let mut args = Vec::new();
    match (&cfg.boot, restore) {
        (_, Some(snapshot)) => {
            args.extend(["--restore".to_owned(), snapshot.display().to_string()]);
        }
        (GuestBoot::Kernel { kernel, initrd }, None) => {
            args.extend(["--kernel".to_owned(), kernel.display().to_string()]);
            if let Some(i) = initrd {
                args.extend(["--initrd".to_owned(), i.display().to_string()]);
            }
            args.extend(["--cmdline".to_owned(), cfg.cmdline.clone()]);
        }
        (
            GuestBoot::Android {
                boot_img,
                vendor_boot,
            },
            None,
        ) => {
            args.extend(["--boot-img".to_owned(), boot_img.display().to_string()]);
            if let Some(v) = vendor_boot {
                args.extend(["--vendor-boot".to_owned(), v.display().to_string()]);
            }
        }
    }
    if restore.is_none() {
        args.extend([
            "--cpus".to_owned(),
            profile.vcpus.to_string(),
            "--memory".to_owned(),
            profile.memory_mib.to_string(),
        ]);
    }
    if matches!(cfg.boot, GuestBoot::Android { .. }) {
        // hvc0: kernel console; hvc1: the phone agent's report port (PHONE_READY, inputs).
        for (port, name) in [(0, "console.log"), (1, "report.log")] {
            args.extend([
                "--console".to_owned(),
                format!("port={port},path={}", dir.dir.join(name).display()),
            ]);
        }
    }
    if !profile.image.is_empty() {
        let base = cfg.image_dir.join(&profile.image);
        args.extend([
            "--disk".to_owned(),
            format!("{},overlay={}", base.display(), dir.overlay().display()),
        ]);
    }
    if cfg.devices.gpu {
        args.extend([
            "--gpu".to_owned(),
            format!(
                "width={},height={},dpi={}",
                profile.width, profile.height, profile.dpi
            ),
        ]);
    }
    if cfg.devices.input {
        args.extend(["--input".to_owned(), "touch,keyboard".to_owned()]);
    }
    if cfg.devices.rng {
        args.push("--rng".to_owned());
    }
    if cfg.devices.balloon {
        args.push("--balloon".to_owned());
    }
    if cfg.devices.ksm {
        args.push("--mergeable".to_owned());
    }
    if let Some(cid) = vsock_cid {
        args.extend([
            "--vsock".to_owned(),
            format!("cid={cid},uds={}", dir.vsock_socket().display()),
        ]);
    }
    args.extend([
        "--api-socket".to_owned(),
        dir.api_socket().display().to_string(),
        "--serial".to_owned(),
        format!("file:{}", dir.dir.join("serial.log").display()),
        "--on-reboot".to_owned(),
        "exit".to_owned(),
    ]);
    args
}

/// (Re)creates the phone's copy-on-write overlay over the profile's clean base image:
/// this is what makes a reset leave nothing of the previous user behind.
pub async fn recreate_overlay(
    cfg: &VmmConfig,
    profile: &Profile,
    dir: &PhoneDir,
) -> anyhow::Result<()> {
    if profile.image.is_empty() {
        return Ok(());
    }
    let base = cfg.image_dir.join(&profile.image);
    if !base.is_file() {
        bail!(
            "base image {} of profile {} is missing on this host",
            base.display(),
            profile.name
        );
    }
    let overlay = dir.overlay();
    let _ = std::fs::remove_file(&overlay);
    let out = tokio::process::Command::new(&cfg.qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(&base)
        .args(["-F", "raw"])
        .arg(&overlay)
        .output()
        .await
        .with_context(|| format!("running {} (install qemu-utils)", cfg.qemu_img.display()))?;
    if !out.status.success() {
        bail!(
            "qemu-img create overlay failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Starts the VMM for a phone: fresh directory entries, pid + generation files. With
/// `snapshot` the phone is a clone of it (its disk a copy of the snapshot's overlay),
/// otherwise it cold-boots (a fresh overlay when `fresh_overlay` or none exists).
pub async fn start(
    cfg: &VmmConfig,
    profile: &Profile,
    dir: &PhoneDir,
    generation: i64,
    fresh_overlay: bool,
    snapshot: Option<&super::warm::Snapshot>,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&dir.dir).with_context(|| format!("creating {}", dir.dir.display()))?;
    if let Some(snapshot) = snapshot {
        super::warm::copy_disk(snapshot, dir).await?;
    } else if fresh_overlay || (!profile.image.is_empty() && !dir.overlay().exists()) {
        recreate_overlay(cfg, profile, dir).await?;
    }
    let _ = std::fs::remove_file(dir.api_socket());
    let _ = std::fs::remove_file(dir.vsock_socket());
    let vsock_cid = match cfg.devices.vsock {
        true => Some(vsock_cid(cfg, dir)?),
        false => None,
    };
    // A fresh console log per boot, so "the guest came up" is never read from an old boot.
    let _ = std::fs::remove_file(dir.dir.join("serial.log"));
    let _ = std::fs::remove_file(dir.dir.join("report.log"));
    let log = super::logcap::open_log(&dir.dir.join("vmm.log")).context("creating vmm.log")?;
    let mut args = command_line(
        cfg,
        profile,
        dir,
        snapshot.map(|s| s.vm.as_path()),
        vsock_cid,
    );
    if let Some(jail) = &cfg.jail {
        args.extend(super::jail::vmm_args(cfg, jail, dir)?);
    }
    let mut command = tokio::process::Command::new(&cfg.vmm);
    // The agent's environment (its key, tokens) is none of a VMM's business: only PATH, the
    // log filter and the VMM's own knobs (CLOUDPHONE_VMM_*) go along.
    command
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| {
            let k = k.to_string_lossy();
            k == "PATH" || k == "RUST_LOG" || k.starts_with("CLOUDPHONE_VMM_")
        }));
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Own process group: Ctrl-C on the agent must not kill the phones.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", cfg.vmm.display()))?;
    let pid = child.id().context("VMM exited immediately")?;
    std::fs::write(dir.pid_file(), pid.to_string()).context("writing vmm.pid")?;
    std::fs::write(dir.generation_file(), generation.to_string()).context("writing generation")?;
    tracing::info!(phone = %dir.dir.display(), pid, restored = snapshot.is_some(), "VMM started");
    Ok(Running::Child(child))
}

/// Stops a VMM: ACPI shutdown through its API, then SIGKILL after `grace`.
pub async fn stop(dir: &PhoneDir, mut running: Running, grace: Duration) {
    let _ = VmmApi::new(dir.api_socket()).shutdown(grace).await;
    let deadline = Instant::now() + grace;
    while running.exited().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if running.exited().is_none() {
        if let Some(pid) = running.pid() {
            // SAFETY: plain kill(2) on a pid we started (or adopted from our pid file).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Running::Child(c) = &mut running {
            let _ = c.wait().await;
        } else {
            while running.exited().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let _ = std::fs::remove_file(dir.pid_file());
}

/// A VMM left running by a previous agent.
pub struct Adoptable {
    pub phone_id: String,
    pub pid: i32,
    /// It was started with `--restore` (a clone: ready without a new PHONE_READY).
    pub restored: bool,
}

/// Finds VMMs left running by a previous agent: each pid file whose process is alive and is
/// a VMM serving this phone's socket; stale pid files are removed.
pub fn adopt_all(cfg: &VmmConfig) -> Vec<Adoptable> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(cfg.state_dir.join("phones")) else {
        return out;
    };
    for e in entries.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        let dir = PhoneDir::new(cfg, &id);
        let Some(pid) = std::fs::read_to_string(dir.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let sock = dir.api_socket().display().to_string();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let ours = cmdline.split('\0').any(|a| a == sock);
        if alive(pid) && ours {
            out.push(Adoptable {
                phone_id: id,
                pid,
                restored: cmdline.split('\0').any(|a| a == "--restore"),
            });
        } else {
            let _ = std::fs::remove_file(dir.pid_file());
        }
    }
    out
}

/// Removes a phone's directory (after stop) and frees its jail.
pub fn remove(cfg: &VmmConfig, dir: &PhoneDir) {
    super::jail::release(cfg, dir);
    if let Err(e) = std::fs::remove_dir_all(&dir.dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("removing {}: {e}", dir.dir.display());
        }
    }
}

/// Moves a phone's directory (after stop) to `<state-dir>/quarantine/ID.TIMESTAMP` instead of
/// deleting it: for phones the agent does not recognise or that failed, whose disk may hold a
/// user's data. An operator decides what to do with it (`cloudphone phones wipe` for data the
/// service still knows, plain `rm` here otherwise).
pub fn quarantine(cfg: &VmmConfig, dir: &PhoneDir) {
    super::jail::release(cfg, dir);
    let Some(id) = dir.dir.file_name() else {
        return;
    };
    if !dir.dir.exists() {
        return;
    }
    let place = cfg.state_dir.join("quarantine");
    let to = place.join(format!("{}.{}", id.to_string_lossy(), crate::now_ms()));
    match std::fs::create_dir_all(&place).and_then(|_| std::fs::rename(&dir.dir, &to)) {
        Ok(()) => {
            tracing::warn!(from = %dir.dir.display(), to = %to.display(), "phone directory quarantined")
        }
        Err(e) => tracing::error!(
            "quarantining {} to {}: {e}; left in place",
            dir.dir.display(),
            to.display()
        ),
    }
}

/// Restart delay after the `n`th crash in a row: 0.5 s doubling, capped at 30 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis((500u64 << n.min(6)).min(30_000))
}

/// How much of the report port's log is read looking for the ready line (the line comes
/// first thing after boot; the log grows with every input afterwards).
const REPORT_SCAN_LIMIT: u64 = 64 * 1024;

/// The line a phone's guest agent writes on its report port (hvc1) once it is ready.
pub const READY_MARKER: &str = "PHONE_READY";
/// The line a phone's guest agent writes once it has taken its own identity (at boot, and in a
/// clone after the VMM gave it a new VM generation id).
pub const IDENTITY_MARKER: &str = "IDENTITY";

/// Whether the phone's guest agent has written a line starting with `marker` on its report
/// port in this boot or restore (the log is fresh per VMM start).
pub fn guest_reported(dir: &PhoneDir, marker: &str) -> bool {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(dir.dir.join("report.log")) else {
        return false;
    };
    let mut text = Vec::new();
    if file.take(REPORT_SCAN_LIMIT).read_to_end(&mut text).is_err() {
        return false;
    }
    text.split(|b| *b == b'\n')
        .any(|line| line.starts_with(marker.as_bytes()))
}

/// The 720p, 2-vCPU profile with a base image that the agent's unit tests boot.
#[cfg(test)]
pub(super) fn test_profile() -> Profile {
    Profile {
        id: "pr_1".into(),
        name: "p".into(),
        width: 720,
        height: 1280,
        dpi: 320,
        vcpus: 2,
        memory_mib: 2048,
        image: "base.img".into(),
        pool_size: 1,
        created_ms: 0,
    }
}

/// An agent configuration for unit tests (kernel boot, all devices, no jail).
#[cfg(test)]
pub(super) fn test_config() -> VmmConfig {
    VmmConfig {
        vmm: "/bin/vmm".into(),
        boot: GuestBoot::Kernel {
            kernel: "/k".into(),
            initrd: Some("/i".into()),
        },
        cmdline: "console=hvc0".into(),
        image_dir: "/img".into(),
        qemu_img: "qemu-img".into(),
        state_dir: "/s".into(),
        devices: Devices::parse("gpu,input,rng").unwrap(),
        jail: None,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn ready_only_after_the_guest_says_so() {
        let root = std::env::temp_dir().join(format!("cp-ready-{}", std::process::id()));
        let dir = PhoneDir { dir: root.clone() };
        std::fs::create_dir_all(&root).unwrap();
        let ready = |dir: &PhoneDir| guest_reported(dir, READY_MARKER);
        assert!(!ready(&dir), "no report log yet");
        std::fs::write(root.join("report.log"), "booting\nPHONE_READ").unwrap();
        assert!(!ready(&dir), "a partial line is not the marker");
        std::fs::write(
            root.join("report.log"),
            "x PHONE_READY\nPHONE_READY width=720 height=1280\n",
        )
        .unwrap();
        assert!(ready(&dir));
        assert!(!guest_reported(&dir, IDENTITY_MARKER));
        std::fs::remove_dir_all(&root).unwrap();
    }
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_millis(1000));
        assert_eq!(backoff(20), Duration::from_secs(30));
    }

    #[test]
    fn command_line_follows_the_vmm_contract() {
        let cfg = test_config();
        let p = test_profile();
        let dir = PhoneDir::new(&cfg, "ph_1");
        let args = command_line(&cfg, &p, &dir, None, None).join(" ");
        assert!(
            args.contains("--disk /img/base.img,overlay=/s/phones/ph_1/overlay.qcow2"),
            "{args}"
        );
        assert!(args.contains("--gpu width=720,height=1280,dpi=320"));
        assert!(args.contains("--api-socket /s/phones/ph_1/api.sock"));
        assert!(args.contains("--cpus 2 --memory 2048"));
        assert!(args.contains("--on-reboot exit"));
        let bare = VmmConfig {
            devices: Devices::parse("none").unwrap(),
            ..cfg
        };
        let args = command_line(&bare, &p, &dir, None, None).join(" ");
        assert!(
            !args.contains("--gpu") && !args.contains("--input") && !args.contains("--rng"),
            "{args}"
        );
        assert!(Devices::parse("gpu,cdrom").is_err());
        let dense = VmmConfig {
            devices: Devices::parse("balloon,ksm").unwrap(),
            ..bare.clone()
        };
        let args = command_line(&dense, &p, &dir, None, None).join(" ");
        assert!(
            args.contains("--balloon") && args.contains("--mergeable"),
            "{args}"
        );
        let android = VmmConfig {
            boot: GuestBoot::Android {
                boot_img: "/img/boot.img".into(),
                vendor_boot: Some("/img/vendor_boot.img".into()),
            },
            ..bare
        };
        let args = command_line(&android, &p, &dir, None, None).join(" ");
        assert!(
            args.starts_with("--boot-img /img/boot.img --vendor-boot /img/vendor_boot.img"),
            "{args}"
        );
        assert!(
            !args.contains("--kernel") && !args.contains("--cmdline"),
            "{args}"
        );
        assert!(
            args.contains("--console port=1,path=/s/phones/ph_1/report.log"),
            "{args}"
        );
        let snapshot = Some(Path::new("/s/snapshots/pr_1/vm"));
        let clone = command_line(&android, &p, &dir, snapshot, Some(7)).join(" ");
        assert!(
            clone.starts_with("--restore /s/snapshots/pr_1/vm --console port=0"),
            "a clone gets the snapshot and its own consoles, not boot images: {clone}"
        );
        assert!(
            !clone.contains("--boot-img")
                && !clone.contains("--cpus")
                && !clone.contains("--memory"),
            "{clone}"
        );
        assert!(clone.contains("--disk /img/base.img,overlay=/s/phones/ph_1/overlay.qcow2"));
        assert!(clone.contains("--api-socket /s/phones/ph_1/api.sock"));
        assert!(
            clone.contains("--vsock cid=7,uds=/s/phones/ph_1/vsock.sock"),
            "a clone gets its own CID and vsock socket: {clone}"
        );
        assert_eq!(vsock_socket_beside(&dir.api_socket()), dir.vsock_socket());
    }

    #[test]
    fn vsock_cids_are_unique_per_host_and_kept_per_phone() {
        let root = std::env::temp_dir().join(format!("cp-cid-{}", std::process::id()));
        let cfg = VmmConfig {
            state_dir: root.clone(),
            devices: Devices::parse("vsock").unwrap(),
            ..test_config()
        };
        let dirs: Vec<PhoneDir> = (0..4)
            .map(|i| PhoneDir::new(&cfg, &format!("ph_{i}")))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(&d.dir).unwrap();
        }
        let cids: Vec<u32> = dirs.iter().map(|d| vsock_cid(&cfg, d).unwrap()).collect();
        assert_eq!(cids, [3, 4, 5, 6]);
        assert_eq!(
            vsock_cid(&cfg, &dirs[2]).unwrap(),
            5,
            "a phone keeps its CID"
        );
        // A removed phone's CID is free again; a garbled file is replaced.
        remove(&cfg, &dirs[1]);
        std::fs::write(dirs[3].cid_file(), "2").unwrap();
        let again = PhoneDir::new(&cfg, "ph_new");
        std::fs::create_dir_all(&again.dir).unwrap();
        assert_eq!(vsock_cid(&cfg, &again).unwrap(), 4);
        assert_eq!(vsock_cid(&cfg, &dirs[3]).unwrap(), 6);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
