//! The per-phone jail (`--jail`), Firecracker's jailer done inside the VMM before the guest
//! runs: the phone's own uid/gid, new mount, pid, IPC, UTS and network namespaces,
//! `pivot_root` into the phone's directory (inputs from elsewhere bind-mounted read-only),
//! cgroup v2 limits, rlimits, `no_new_privs`, no capabilities and an empty environment. A
//! VMM taken over by its guest then sees only its own phone. Layout and fallbacks: vmm/API.md.

#[cfg(debug_assertions)]
pub mod probe;
mod sys;

use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use crate::config::VmConfig;
use crate::legacy::SerialOutput;
use crate::vm::VmSource;
use cloudphone_virtio::console::PortBackend;

/// Exit code of a VMM whose jail could not be set up (vmm/API.md).
pub const EXIT_JAIL: i32 = 38;
/// Where, inside the jail, files from outside its root are bind-mounted (one entry each).
const INPUTS_DIR: &str = ".jail";
/// Where, inside the jail, the framebuffer's tmpfs directory is bind-mounted.
const SHM_INSIDE: &str = "shm";
/// Parent of the default per-phone framebuffer directories (tmpfs: frames never hit a disk).
const SHM_PARENT: &str = "/dev/shm/cloudphone-jail";
/// Host memory a jailed VMM may use beyond guest RAM (device queues, framebuffer, page cache).
const MEMORY_OVERHEAD_MIB: u64 = 256;
/// Threads a jailed VMM may have (vCPUs, device workers, API connections).
const PIDS_MAX: u32 = 256;
/// Open files a jailed VMM may have (eventfds, disks, sockets).
const NOFILE: u64 = 4096;

/// `--jail root=DIR[,uid=N,gid=N][,shm=DIR][,cgroup=DIR]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// The phone's directory: the VMM's `/` (its sockets, logs and overlay live here).
    pub root: PathBuf,
    /// The phone's own uid and gid (needs root; without root the VMM keeps its uid inside an
    /// unprivileged user namespace).
    pub ids: Option<(u32, u32)>,
    /// Host tmpfs directory for the framebuffer (default `/dev/shm/cloudphone-jail/<root name>`).
    pub shm: Option<PathBuf>,
    /// Parent cgroup v2 directory (default `<cgroup2 mount>/cloudphone`).
    pub cgroup: Option<PathBuf>,
}

impl FromStr for JailSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (mut root, mut uid, mut gid, mut shm, mut cgroup) = (None, None, None, None, None);
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let absolute = || {
                let p = PathBuf::from(value);
                p.is_absolute()
                    .then_some(p)
                    .ok_or_else(|| format!("{key}={value:?} must be an absolute path"))
            };
            let id = || {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|id| *id != 0)
                    .ok_or_else(|| format!("{key}={value:?} must be a non-zero number"))
            };
            match key {
                "root" => root = Some(absolute()?),
                "uid" => uid = Some(id()?),
                "gid" => gid = Some(id()?),
                "shm" => shm = Some(absolute()?),
                "cgroup" => cgroup = Some(absolute()?),
                _ => {
                    return Err(format!(
                        "unknown key {key:?}: use root, uid, gid, shm, cgroup"
                    ))
                }
            }
        }
        let ids = match (uid, gid) {
            (Some(u), Some(g)) => Some((u, g)),
            (None, None) => None,
            _ => return Err("give uid= and gid= together".into()),
        };
        Ok(Self {
            root: root.ok_or("root=DIR is required")?,
            ids,
            shm,
            cgroup,
        })
    }
}

/// Why the jail could not be set up (exit [`EXIT_JAIL`]).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A path or option the jail cannot honour.
    #[error("--jail: {0}")]
    Config(String),
    /// A system call failed (the error follows as the source).
    #[error("--jail: {what}")]
    Sys {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// One file or directory from outside the root, bind-mounted into the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bind {
    host: PathBuf,
    /// Relative to the root.
    inside: PathBuf,
    writable: bool,
}

/// The jail's view of the configuration: which host paths become which paths inside.
#[derive(Debug)]
struct Plan {
    root: PathBuf,
    binds: Vec<Bind>,
    /// Host paths in the root the VMM writes (given to the phone's uid when they exist).
    writes: Vec<PathBuf>,
}

/// `path` with symlinks resolved (its parent's, for a file that does not exist yet).
fn resolve(path: &Path) -> std::io::Result<PathBuf> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(std::io::Error::other("'..' is not allowed in jailed paths"));
    }
    match std::fs::canonicalize(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
            let name = path.file_name().ok_or(e)?;
            Ok(std::fs::canonicalize(parent.unwrap_or(Path::new(".")))?.join(name))
        }
        other => other,
    }
}

impl Plan {
    fn new(root: PathBuf) -> Self {
        Self {
            root,
            binds: Vec::new(),
            writes: Vec::new(),
        }
    }

    /// Inside path of a file the VMM creates or writes (sockets, logs, the overlay): it must
    /// be in the phone's directory.
    fn own(&mut self, what: &str, path: &Path) -> Result<PathBuf, JailError> {
        let real = resolve(path).map_err(sys_err(format!("{what} {}", path.display())))?;
        let inside = self.inside(what, path, &real)?;
        self.writes.push(real);
        Ok(inside)
    }

    /// `real`'s path inside the jail, if it is in the root.
    fn inside(&self, what: &str, path: &Path, real: &Path) -> Result<PathBuf, JailError> {
        match real.strip_prefix(&self.root) {
            Ok(rest) => Ok(Path::new("/").join(rest)),
            Err(_) => Err(JailError::Config(format!(
                "{what} {} must be inside the jail root {} (a jailed VMM sees nothing else)",
                path.display(),
                self.root.display()
            ))),
        }
    }

    /// Inside path of an input: its own path when it is in the phone's directory, else a
    /// bind mount of it under `/.jail` (read-only unless `writable`).
    fn input(&mut self, what: &str, path: &Path, writable: bool) -> Result<PathBuf, JailError> {
        let real = resolve(path).map_err(sys_err(format!("{what} {}", path.display())))?;
        if real.starts_with(&self.root) {
            if writable {
                return self.own(what, &real);
            }
            return self.inside(what, path, &real);
        }
        if !real.exists() {
            return Err(JailError::Config(format!(
                "{what} {} does not exist",
                path.display()
            )));
        }
        if let Some(b) = self.binds.iter_mut().find(|b| b.host == real) {
            b.writable |= writable;
            return Ok(Path::new("/").join(&b.inside));
        }
        let name = real.file_name().unwrap_or_default().to_string_lossy();
        let inside = Path::new(INPUTS_DIR).join(format!("{}-{name}", self.binds.len()));
        self.binds.push(Bind {
            host: real,
            inside: inside.clone(),
            writable,
        });
        Ok(Path::new("/").join(inside))
    }

    /// Rewrites every path of `cfg` (and the already loaded `source`) to what the VMM will
    /// see inside the jail, recording the bind mounts that needs.
    fn rewrite(
        &mut self,
        cfg: &mut VmConfig,
        source: &mut VmSource,
        shm_host: &Path,
    ) -> Result<(), JailError> {
        use crate::config::BootSource;
        if cfg.devices.net.is_some() {
            return Err(JailError::Config(
                "--net is not supported in a jail yet (the TAP lives in the host's network namespace): run this phone without a NIC or without --jail".into(),
            ));
        }
        let mut input = |what: &str, p: &mut PathBuf| -> Result<(), JailError> {
            *p = self.input(what, p, false)?;
            Ok(())
        };
        match &mut cfg.boot {
            BootSource::Linux { kernel, initrd } => {
                input("--kernel", kernel)?;
                if let Some(i) = initrd {
                    input("--initrd", i)?;
                }
            }
            BootSource::Android {
                boot,
                vendor_boot,
                init_boot,
            } => {
                input("--boot-img", boot)?;
                if let Some(v) = vendor_boot {
                    input("--vendor-boot", v)?;
                }
                if let Some(i) = init_boot {
                    input("--init-boot", i)?;
                }
            }
            BootSource::Snapshot { dir } => input("--restore", dir)?,
        }
        if let VmSource::Restore { dir, .. } = source {
            input("--restore", dir)?;
        }
        for disk in &mut cfg.devices.disks {
            let writable = !disk.read_only && disk.overlay.is_none();
            disk.path = self.input("--disk", &disk.path, writable)?;
            if let Some(o) = &mut disk.overlay {
                *o = self.input("--disk overlay", o, true)?;
            }
        }
        if let SerialOutput::File(p) = &mut cfg.serial {
            *p = self.own("--serial", p)?;
        }
        if let Some(p) = &mut cfg.api_socket {
            *p = self.own("--api-socket", p)?;
        }
        for port in &mut cfg.console_ports {
            if let PortBackend::File(p) | PortBackend::Socket(p) = &mut port.backend {
                *p = self.own("--console", p)?;
            }
        }
        if let Some(v) = &mut cfg.devices.vsock {
            v.uds = self.own("--vsock uds", &v.uds)?;
        }
        cfg.devices.framebuffer_dir = cloudphone_display::ExportDir {
            dir: Path::new("/").join(SHM_INSIDE),
            host_dir: shm_host.to_path_buf(),
        };
        Ok(())
    }
}

/// Enters the jail `spec` describes for the VM of `cfg`, whose boot files are already in
/// `source`: rewrites `cfg`'s paths to the jail's view, and forks. Returns in the jailed VMM
/// (pid 1 of its namespace); the original process stays outside as its supervisor and exits
/// with its status (a SIGTERM/SIGINT/SIGHUP or its own death kills the jailed VMM).
pub fn enter(spec: &JailSpec, cfg: &mut VmConfig, source: &mut VmSource) -> Result<(), JailError> {
    let root = std::fs::canonicalize(&spec.root)
        .map_err(sys_err(format!("root {}", spec.root.display())))?;
    let privileged = sys::euid() == 0;
    let ids = match (privileged, spec.ids) {
        (true, Some(ids)) => Some(ids),
        (true, None) => {
            return Err(JailError::Config(
                "running as root, the jail needs uid=N,gid=N (the phone's own ids)".into(),
            ))
        }
        (false, Some(_)) => {
            return Err(JailError::Config(
                "uid=/gid= need root; without root leave them out (the VMM keeps its uid in an unprivileged user namespace)".into(),
            ))
        }
        (false, None) => None,
    };
    let name = root.file_name().unwrap_or_default().to_owned();
    let shm_host = spec
        .shm
        .clone()
        .unwrap_or_else(|| Path::new(SHM_PARENT).join(&name));
    std::fs::create_dir_all(&shm_host).map_err(sys_err(format!(
        "creating the framebuffer directory {}",
        shm_host.display()
    )))?;
    let mut plan = Plan::new(root.clone());
    plan.rewrite(cfg, source, &shm_host)?;
    let fsize = file_size_limit(cfg, &plan);
    sys::unshare_namespaces(!privileged)?;
    match ids {
        Some((uid, gid)) => {
            match cgroup_limits(spec, &name.to_string_lossy(), cfg) {
                Ok(dir) => tracing::info!(cgroup = %dir.display(), "jail: cgroup v2 limits set"),
                Err(e) => tracing::warn!(
                    "jail: cgroup v2 is not writable ({e}): this phone runs WITHOUT cpu/memory/pids limits"
                ),
            }
            sys::give_to_phone(&root, &plan.writes, &shm_host, uid, gid)?;
        }
        None => tracing::warn!(
            "jail: not root, so an unprivileged user namespace with the same uid and NO cgroup limits"
        ),
    }
    sys::mount_and_pivot(&root, &plan.binds, &shm_host)?;
    sys::become_phone(ids, fsize)?;
    clear_environment();
    tracing::info!(root = %root.display(), uid = ?ids.map(|i| i.0), "jail: entered");
    sys::fork_supervised()
}

/// RLIMIT_FSIZE: room for every disk to double (a qcow2 overlay grows towards its base's
/// size) plus a snapshot of guest RAM, so only runaway writes hit it.
fn file_size_limit(cfg: &VmConfig, plan: &Plan) -> u64 {
    let disks: u64 = cfg
        .devices
        .disks
        .iter()
        .map(|d| {
            let host = plan
                .binds
                .iter()
                .find(|b| Path::new("/").join(&b.inside) == d.path)
                .map(|b| b.host.clone())
                .unwrap_or_else(|| plan.root.join(d.path.strip_prefix("/").unwrap_or(&d.path)));
            std::fs::metadata(host).map(|m| m.len()).unwrap_or(0)
        })
        .sum();
    2 * disks + (cfg.memory_mib << 20) + (1 << 30)
}

/// The environment the agent started us with (its tokens, keys, paths) is not the guest's
/// business: nothing of it stays for a taken-over VMM to read.
fn clear_environment() {
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
}

/// The cgroup v2 mount point (from `/proc/self/mountinfo`).
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let point = mount.split_whitespace().nth(4)?;
        (fs.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Puts this process in `<parent>/<name>` with cpu.max, memory.max and pids.max from `cfg`;
/// returns the cgroup, or why it could not.
fn cgroup_limits(spec: &JailSpec, name: &str, cfg: &VmConfig) -> Result<PathBuf, String> {
    let parent = match &spec.cgroup {
        Some(p) => p.clone(),
        None => cgroup2_mount()
            .ok_or("no cgroup2 file system is mounted")?
            .join("cloudphone"),
    };
    let write = |file: PathBuf, value: String| {
        std::fs::write(&file, &value)
            .map_err(|e| format!("writing {value:?} to {}: {e}", file.display()))
    };
    std::fs::create_dir_all(&parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let controllers = "+cpu +memory +pids".to_string();
    if let Some(grand) = parent.parent() {
        // The mount's root may already delegate them; a failure shows up on the next write.
        let _ = std::fs::write(grand.join("cgroup.subtree_control"), &controllers);
    }
    write(parent.join("cgroup.subtree_control"), controllers)?;
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    write(
        dir.join("cpu.max"),
        format!("{} 100000", u64::from(cfg.cpus) * 100_000),
    )?;
    write(
        dir.join("memory.max"),
        ((cfg.memory_mib + MEMORY_OVERHEAD_MIB) << 20).to_string(),
    )?;
    write(dir.join("pids.max"), PIDS_MAX.to_string())?;
    write(dir.join("cgroup.procs"), "0".into())?;
    Ok(dir)
}

#[cfg(test)]
mod tests;
