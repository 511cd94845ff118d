//! Escape probes (debug builds only): `CLOUDPHONE_VMM_TEST_ESCAPE=THREAD:OP:ARG` makes the
//! VMM, once jailed and filtered, try one thing a guest that took it over would try, print
//! `escape-probe: ok` or `escape-probe: errno N`, and exit 0 (or die by the filter, exit 35).
//! THREAD is `main` (the process filter, the most permissive) or `vcpu` (a thread under the
//! vCPU filter). OP:ARG is `open:PATH`, `read:PATH`, `connect:PATH`, `ptrace:PID`,
//! `execve:PATH` or `ioctl:TCGETS`. The tests in vmm/tests/jail.rs drive it.

use std::ffi::CString;
use std::io;

use crate::seccomp::{self, SeccompMode, ThreadKind};

/// The environment variable naming the probe.
pub const ENV: &str = "CLOUDPHONE_VMM_TEST_ESCAPE";

/// The probe asked for, read before the jail clears the environment.
pub fn requested() -> Option<String> {
    std::env::var(ENV).ok()
}

fn errno(rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn attempt(op: &str, arg: &str) -> io::Result<()> {
    match op {
        "open" => std::fs::File::open(arg).map(drop),
        "read" => std::fs::read(arg).map(drop),
        "connect" => std::os::unix::net::UnixStream::connect(arg).map(drop),
        "ptrace" => {
            let pid: libc::pid_t = arg.parse().map_err(io::Error::other)?;
            // SAFETY: PTRACE_ATTACH with no data pointers.
            errno(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) })
        }
        "execve" => {
            let path = CString::new(arg).map_err(io::Error::other)?;
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated path and null-terminated argv/envp arrays.
            errno(unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) }.into())
        }
        "ioctl" => {
            // SAFETY: TCGETS on stderr writes into a termios we own.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            errno(unsafe { libc::ioctl(2, libc::TCGETS, &mut t) }.into())
        }
        other => Err(io::Error::other(format!("unknown probe {other:?}"))),
    }
}

/// Runs `spec` under `mode`'s filters and returns the exit code (0: it ran; the outcome is
/// printed).
pub fn run(spec: &str, mode: SeccompMode) -> i32 {
    let mut parts = spec.splitn(3, ':');
    let (thread, op, arg) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let (op, arg) = (op.to_owned(), arg.to_owned());
    let outcome = match thread {
        "main" => attempt(&op, &arg),
        "vcpu" => std::thread::spawn(move || {
            if let Some(filter) =
                seccomp::thread_filter(ThreadKind::Guest, mode).map_err(io::Error::other)?
            {
                seccomp::apply_on_this_thread(&filter).map_err(io::Error::other)?;
            }
            attempt(&op, &arg)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("probe thread panicked"))),
        other => Err(io::Error::other(format!("unknown probe thread {other:?}"))),
    };
    match outcome {
        Ok(()) => println!("escape-probe: ok"),
        Err(e) => println!(
            "escape-probe: errno {} ({e})",
            e.raw_os_error().unwrap_or(-1)
        ),
    }
    0
}
