//! The system calls behind the jail, each wrapped to name what failed.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use super::{sys_err, Bind, JailError, NOFILE, SHM_INSIDE};

fn check(what: &str, rc: libc::c_int) -> Result<(), JailError> {
    if rc == -1 {
        Err(sys_err(what)(io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn cstr(path: &Path) -> CString {
    // Paths from canonicalize never hold NUL.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// The effective uid (0: the jail can give the phone its own ids).
pub(super) fn euid() -> u32 {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() }
}

/// New mount, IPC, UTS and network namespaces for us, and a new pid namespace for our next
/// child; without root, inside a new user namespace that maps our uid/gid to themselves.
pub(super) fn unshare_namespaces(user: bool) -> Result<(), JailError> {
    // SAFETY: getuid/getgid have no failure mode.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWPID;
    if user {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: unshare only changes this (single-threaded) process's namespaces.
    check(
        "unshare (new mount/pid/ipc/uts/net namespaces; without root this needs unprivileged user namespaces)",
        unsafe { libc::unshare(flags) },
    )?;
    if user {
        let write = |file: &str, text: String| {
            std::fs::write(file, text).map_err(sys_err(format!("writing /proc/self/{file}")))
        };
        write("/proc/self/setgroups", "deny".into())?;
        write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
        write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    }
    let host = b"phone";
    // SAFETY: the buffer is valid for its length.
    check("sethostname", unsafe {
        libc::sethostname(host.as_ptr().cast(), host.len())
    })
}

/// Lets the phone `uid:gid` work in its directory `root` and nothing more: `root` keeps its
/// owner (the agent) and becomes group `gid`, mode 1770, so the phone creates its sockets and
/// logs there but cannot remove or replace the agent's files (pid file, generation) thanks
/// to the sticky bit. What the VMM writes (`writes`: the overlay, logs) and the framebuffer
/// directory `shm` become the phone's, without following symlinks.
pub(super) fn give_to_phone(
    root: &Path,
    writes: &[std::path::PathBuf],
    shm: &Path,
    uid: u32,
    gid: u32,
) -> Result<(), JailError> {
    use std::os::unix::fs::{lchown, PermissionsExt};
    lchown(root, None, Some(gid)).map_err(sys_err(format!("chgrp {}", root.display())))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o1770))
        .map_err(sys_err(format!("chmod {}", root.display())))?;
    let existing = writes
        .iter()
        .map(|p| p.as_path())
        .filter(|p| p.symlink_metadata().is_ok());
    for path in existing.chain([shm]) {
        lchown(path, Some(uid), Some(gid)).map_err(sys_err(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    flags: libc::c_ulong,
    what: impl FnOnce() -> String,
) -> Result<(), JailError> {
    let src = src.map(cstr);
    let dst_c = cstr(dst);
    // SAFETY: valid NUL-terminated strings (or null) for the duration of the call.
    let rc = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    check(&what(), rc)
}

/// Mount flags of `path`'s file system that a remount inside a user namespace must keep.
fn locked_flags(path: &Path) -> libc::c_ulong {
    let c = cstr(path);
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ]
    .iter()
    .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
    .fold(0, |acc, (_, ms)| acc | ms)
}

/// Bind-mounts `src` on `dst`: no devices, set-uid or executables; read-only unless `writable`.
fn bind(src: &Path, dst: &Path, writable: bool) -> Result<(), JailError> {
    let what = || format!("bind-mounting {} on {}", src.display(), dst.display());
    mount(Some(src), dst, libc::MS_BIND, what)?;
    let mut flags = libc::MS_BIND
        | libc::MS_REMOUNT
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | locked_flags(src);
    if !writable {
        flags |= libc::MS_RDONLY;
    }
    mount(None, dst, flags, || {
        format!("restricting the bind mount {}", dst.display())
    })
}

/// Makes `root` this mount namespace's `/`, holding only the phone's own files, `binds` and
/// the framebuffer directory `shm_host` at `/shm`. No /proc, /sys or /dev: the VMM opened
/// KVM before.
pub(super) fn mount_and_pivot(
    root: &Path,
    binds: &[Bind],
    shm_host: &Path,
) -> Result<(), JailError> {
    mount(
        None,
        Path::new("/"),
        libc::MS_REC | libc::MS_PRIVATE,
        || "making the mount namespace private".into(),
    )?;
    bind(root, root, true)?;
    for b in binds {
        let at = root.join(&b.inside);
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent)
                .map_err(sys_err(format!("creating {}", parent.display())))?;
        }
        let made = if b.host.is_dir() {
            std::fs::create_dir_all(&at)
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&at)
                .map(drop)
        };
        made.map_err(sys_err(format!(
            "creating the mount point {}",
            at.display()
        )))?;
        bind(&b.host, &at, b.writable)?;
    }
    let shm = root.join(SHM_INSIDE);
    std::fs::create_dir_all(&shm).map_err(sys_err(format!("creating {}", shm.display())))?;
    bind(shm_host, &shm, true)?;
    std::env::set_current_dir(root).map_err(sys_err(format!("chdir {}", root.display())))?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") stacks the old root under the new one; both strings valid.
    check("pivot_root into the jail root", unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int
    })?;
    // SAFETY: detaches the old root, now mounted on ".".
    check("unmounting the host's root", unsafe {
        libc::umount2(dot.as_ptr(), libc::MNT_DETACH)
    })?;
    std::env::set_current_dir("/").map_err(sys_err("chdir /"))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The phone's ids (when given), no capabilities, `no_new_privs` and the rlimits.
pub(super) fn become_phone(ids: Option<(u32, u32)>, fsize: u64) -> Result<(), JailError> {
    if let Some((uid, gid)) = ids {
        // SAFETY: plain credential calls on this single-threaded process.
        check("setgroups([])", unsafe {
            libc::setgroups(0, std::ptr::null())
        })?;
        check(&format!("setresgid({gid})"), unsafe {
            libc::setresgid(gid, gid, gid)
        })?;
        check(&format!("setresuid({uid})"), unsafe {
            libc::setresuid(uid, uid, uid)
        })?;
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads the header and two data structs we own.
    check("dropping all capabilities", unsafe {
        libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int
    })?;
    // SAFETY: prctl with integer arguments.
    check("no_new_privs", unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    })?;
    let limit = |resource, wanted: u64, what: &str| {
        // SAFETY: getrlimit/setrlimit on a struct we own.
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(resource, &mut cur) };
        let value = wanted.min(cur.rlim_max);
        let new = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        check(what, unsafe { libc::setrlimit(resource, &new) })
    };
    limit(libc::RLIMIT_NOFILE, NOFILE, "setrlimit NOFILE")?;
    limit(libc::RLIMIT_FSIZE, fsize, "setrlimit FSIZE")?;
    // A write past FSIZE fails with EFBIG (an I/O error for the guest) instead of killing us.
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    Ok(())
}

/// The jailed VMM's pid, for the supervisor's signal handler.
static JAILED: AtomicI32 = AtomicI32::new(0);

extern "C" fn kill_jailed(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; the pid is our own child.
    unsafe { libc::kill(JAILED.load(Ordering::Relaxed), libc::SIGKILL) };
}

/// Forks into the new pid namespace. The child (pid 1 there) returns and becomes the VMM; it
/// dies with its parent. The parent supervises: a SIGTERM, SIGINT or SIGHUP kills the VMM,
/// and the parent exits with the VMM's status (re-raising the signal that killed it).
pub(super) fn fork_supervised() -> Result<(), JailError> {
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills the array we own.
    check("pipe2", unsafe {
        libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    let [read_end, write_end] = pipe;
    // SAFETY: we are single-threaded here, so the child may run Rust code after fork.
    let pid = unsafe { libc::fork() };
    check("fork into the new pid namespace", pid)?;
    if pid == 0 {
        // SAFETY: closing our copy of the write end, then prctl/poll on fds we own.
        unsafe {
            libc::close(write_end);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The parent holds the write end until it dies: a hang-up means it died before
            // PDEATHSIG was armed.
            let mut fd = libc::pollfd {
                fd: read_end,
                events: libc::POLLIN,
                revents: 0,
            };
            if libc::poll(&mut fd, 1, 0) > 0 && fd.revents & libc::POLLHUP != 0 {
                libc::_exit(super::EXIT_JAIL);
            }
            libc::close(read_end);
        }
        return Ok(());
    }
    JAILED.store(pid, Ordering::Relaxed);
    // SAFETY: installing a handler that only calls kill(2); closing our read end.
    unsafe {
        libc::close(read_end);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::signal(sig, kill_jailed as *const () as libc::sighandler_t);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            std::process::exit(super::EXIT_JAIL);
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restore the default action and die of the same signal.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        std::process::exit(128 + sig);
    }
    std::process::exit(libc::WEXITSTATUS(status))
}
