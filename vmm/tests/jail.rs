//! Escape tests for `--jail` (issue 14), tier 1: the VMM, jailed and filtered as for a phone,
//! runs one escape probe (vmm/src/jail/probe.rs) in place of a guest that took it over. Each
//! attack is first shown to work without the jail, so a probe that cannot succeed proves
//! nothing. As root the jail gives the phone its own uid; otherwise it uses an unprivileged
//! user namespace (same uid). No guest boots, so any Linux host runs these.

use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Two phones' directories side by side: `a` is jailed, `b` is its neighbour with an overlay
/// and a live API socket.
struct Phones {
    base: PathBuf,
    _b_api: UnixListener,
}

impl Phones {
    fn new(name: &str) -> Self {
        let base = std::env::temp_dir().join(format!("cp-jail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for phone in ["a", "b"] {
            std::fs::create_dir_all(base.join(phone)).unwrap();
            std::fs::write(base.join(phone).join("overlay.qcow2"), b"user data").unwrap();
        }
        std::fs::write(base.join("kernel"), b"not run").unwrap();
        let b_api = UnixListener::bind(base.join("b/api.sock")).unwrap();
        Self {
            base,
            _b_api: b_api,
        }
    }

    fn path(&self, rel: &str) -> String {
        self.base.join(rel).display().to_string()
    }

    /// Runs `probe` in phone `a`'s VMM under `seccomp` and `jail`; the exit code and the
    /// probe's line.
    fn probe(&self, probe: &str, jail: Jail, seccomp: &str) -> (Option<i32>, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cloudphone-vmm"));
        cmd.args(["--kernel", &self.path("kernel"), "--seccomp", seccomp])
            .args(["--api-socket", &self.path("a/api.sock")])
            .env("CLOUDPHONE_VMM_TEST_ESCAPE", probe)
            .env("CLOUDPHONE_AGENT_SECRET", "the agent's token");
        // SAFETY: geteuid has no failure mode.
        let root = unsafe { libc::geteuid() } == 0;
        let spec = format!("root={},shm={}", self.path("a"), self.path("shm-a"));
        match jail {
            Jail::Off => {}
            Jail::On if root => {
                cmd.arg("--jail").arg(spec + ",uid=100001,gid=100001");
            }
            Jail::On | Jail::Unprivileged => {
                cmd.arg("--jail").arg(spec);
            }
        }
        if root && jail == Jail::Unprivileged {
            std::fs::create_dir_all(self.base.join("shm-a")).unwrap();
            for dir in ["a", "b", "shm-a"] {
                std::os::unix::fs::chown(self.base.join(dir), Some(NOBODY), Some(NOBODY)).unwrap();
            }
            // SAFETY: only async-signal-safe credential calls between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                        || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("escape-probe:"))
            .unwrap_or("")
            .to_owned();
        eprintln!(
            "{probe} {jail:?} seccomp={seccomp}: {:?} {line}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), line)
    }
}

/// How the probed VMM runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jail {
    /// Not jailed (the control: the attack works).
    Off,
    /// Jailed as the agent would: its own uid as root, else a user namespace.
    On,
    /// Jailed without root (as root, the test drops to `nobody` first): a user namespace.
    Unprivileged,
}

/// The uid and gid the unprivileged runs use.
const NOBODY: u32 = 65534;

impl Drop for Phones {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The attacks on the neighbour and the host, as probes.
fn attacks(p: &Phones) -> Vec<(&'static str, String)> {
    let me = std::process::id();
    vec![
        (
            "another phone's overlay",
            format!("main:open:{}", p.path("b/overlay.qcow2")),
        ),
        (
            "another phone's API socket",
            format!("main:connect:{}", p.path("b/api.sock")),
        ),
        (
            "the agent's environment",
            format!("main:read:/proc/{me}/environ"),
        ),
    ]
}

#[test]
fn without_the_jail_each_attack_works() {
    let p = Phones::new("open");
    for (what, probe) in attacks(&p) {
        assert_eq!(
            p.probe(&probe, Jail::Off, "off"),
            (Some(0), "escape-probe: ok".into()),
            "{what}: the probe must be able to succeed"
        );
    }
}

#[test]
fn the_jail_alone_stops_each_attack() {
    let p = Phones::new("jail");
    // Seccomp off: only the jail stands in the way.
    for (what, probe) in attacks(&p) {
        assert_eq!(
            p.probe(&probe, Jail::On, "off"),
            (
                Some(0),
                "escape-probe: errno 2 (No such file or directory (os error 2))".into()
            ),
            "{what}: not even visible in the jail"
        );
    }
    let (code, line) = p.probe(
        &format!("main:ptrace:{}", std::process::id()),
        Jail::On,
        "off",
    );
    assert_eq!(code, Some(0));
    assert!(
        line.starts_with("escape-probe: errno 3 ") || line.starts_with("escape-probe: errno 1 "),
        "ptrace of a process outside the pid namespace: {line}"
    );
    assert_eq!(
        p.probe("main:execve:/bin/sh", Jail::On, "off").1,
        "escape-probe: errno 2 (No such file or directory (os error 2))",
        "the jail holds no programs"
    );
    // Its own files are there, under their own names.
    assert_eq!(
        p.probe("main:open:/overlay.qcow2", Jail::On, "off"),
        (Some(0), "escape-probe: ok".into())
    );
}

#[test]
fn the_jailed_filter_stops_execve_ptrace_and_foreign_ioctls() {
    let p = Phones::new("filter");
    let me = std::process::id();
    // The process filter lets the main thread open and connect: the jail still hides them.
    for (what, probe) in attacks(&p) {
        assert_eq!(
            p.probe(&probe, Jail::On, "enforce").1,
            "escape-probe: errno 2 (No such file or directory (os error 2))",
            "{what}"
        );
    }
    for probe in [
        "main:execve:/bin/sh".to_string(),
        format!("main:ptrace:{me}"),
        "vcpu:ioctl:TCGETS".into(),
    ] {
        assert_eq!(
            p.probe(&probe, Jail::On, "enforce"),
            (Some(35), String::new()),
            "{probe}: the filter stops the VMM (exit 35) before the call runs"
        );
    }
    // Control: the same ioctl passes with the filter off (it fails only as a non-tty).
    assert_eq!(
        p.probe("vcpu:ioctl:TCGETS", Jail::On, "off").1,
        "escape-probe: errno 25 (Inappropriate ioctl for device (os error 25))"
    );
}

#[test]
fn a_jail_root_that_does_not_exist_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudphone-vmm"))
        .args([
            "--kernel",
            "/bin/sh",
            "--jail",
            "root=/nonexistent-phone-dir",
        ])
        .env("CLOUDPHONE_VMM_TEST_ESCAPE", "main:open:/")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(38), "{stderr}");
    assert!(stderr.contains("/nonexistent-phone-dir"), "{stderr}");
}

/// Whether an unprivileged process may create a user namespace here (not in a chroot such
/// as kvm-sandbox's, nor where the kernel or AppArmor forbids it).
fn user_namespaces_allowed() -> bool {
    let mut cmd = Command::new("/bin/true");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let dropped = libc::geteuid() != 0 || libc::setresuid(NOBODY, NOBODY, NOBODY) == 0;
            if !dropped || libc::unshare(libc::CLONE_NEWUSER) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.status().is_ok()
}

#[test]
fn without_root_the_user_namespace_jail_hides_the_neighbour_or_refuses_clearly() {
    let p = Phones::new("userns");
    if !user_namespaces_allowed() {
        // The documented fallback: no jail is not an option, so the VMM refuses to start.
        let out = p.probe("main:open:/overlay.qcow2", Jail::Unprivileged, "off");
        assert_eq!(
            out,
            (Some(38), String::new()),
            "refused: exit 38, the jail failed"
        );
        return;
    }
    for (what, probe) in attacks(&p) {
        assert_eq!(
            p.probe(&probe, Jail::Unprivileged, "off").1,
            "escape-probe: errno 2 (No such file or directory (os error 2))",
            "{what}"
        );
    }
    assert_eq!(
        p.probe("main:open:/overlay.qcow2", Jail::Unprivileged, "off"),
        (Some(0), "escape-probe: ok".into()),
        "its own files are there"
    );
}

#[test]
#[ignore = "tier 2: needs root and a cgroup v2 with the cpu, memory and pids controllers (scripts/kvm-sandbox)"]
fn the_jail_sets_cgroup_limits_from_the_vm_size() {
    let p = Phones::new("cgroup");
    // A cgroup2 mount of our own (the same hierarchy as any other cgroup2 mount).
    let mnt = p.base.join("cgroup2");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting cgroup2 at {}", mnt.display());
    let parent = mnt.join("cloudphone-jail-test");
    let out = Command::new(env!("CARGO_BIN_EXE_cloudphone-vmm"))
        .args([
            "--kernel",
            &p.path("kernel"),
            "--cpus",
            "2",
            "--memory",
            "256",
        ])
        .arg("--jail")
        .arg(format!(
            "root={},shm={},uid=100001,gid=100001,cgroup={}",
            p.path("a"),
            p.path("shm-a"),
            parent.display()
        ))
        .env("CLOUDPHONE_VMM_TEST_ESCAPE", "main:open:/overlay.qcow2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let read = |f: &str| std::fs::read_to_string(parent.join("a").join(f)).unwrap_or_default();
    let limits = (read("cpu.max"), read("memory.max"), read("pids.max"));
    let _ = std::fs::remove_dir(parent.join("a"));
    let _ = std::fs::remove_dir(&parent);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cgroup v2 limits set"), "{stderr}");
    assert_eq!(
        limits,
        (
            "200000 100000\n".to_owned(),
            format!("{}\n", (256 + 256) << 20),
            "256\n".to_owned()
        ),
        "two vCPUs, guest RAM + 256 MiB, 256 tasks"
    );
}
