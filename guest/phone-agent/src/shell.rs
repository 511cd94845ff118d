//! The adb-like shell on vsock port 5555: each connection sends command lines and gets back
//! the output of `sh -c <line>` (stdout and stderr), then `EXIT <code>`. Bounded: a few
//! connections at once, lines up to 4 KiB, output up to 1 MiB, 30 s per command.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

/// The vsock port Android's adbd listens on in Cuttlefish.
pub const PORT: u32 = 5555;
/// Connections served at once; more are closed with a message.
const MAX_CONNECTIONS: usize = 4;
/// Longest command line accepted.
const MAX_LINE: usize = 4096;
/// Output returned per command; the rest is discarded (the command still runs to the end).
const MAX_OUTPUT: usize = 1 << 20;
/// A command running longer is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds the vsock listener (any CID, `port`).
pub fn listen(port: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!(
            "vsock socket: {} (is the vsock / vmw_vsock_virtio_transport module loaded?)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh socket we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain data; zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), len) } != 0 {
        bail!(
            "vsock bind port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: listening on our own bound socket.
    if unsafe { libc::listen(fd, 8) } != 0 {
        bail!(
            "vsock listen port {port}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(owned)
}

/// Accepts connections forever on a background thread.
pub fn spawn(listener: OwnedFd) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vsock-shell".into())
        .spawn(move || {
            let active = Arc::new(AtomicUsize::new(0));
            loop {
                // SAFETY: accepting on our listening socket; the peer address is not needed.
                let fd = unsafe {
                    libc::accept4(
                        listener.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if fd < 0 {
                    tracing::warn!("vsock accept: {}", std::io::Error::last_os_error());
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                // SAFETY: accept returned a new connected socket that we now own.
                let conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = (&conn).write_all(b"ERROR too many shell connections\n");
                    continue;
                }
                let active = active.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("vsock-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(conn.try_clone().map(BufReader::new), &conn) {
                                tracing::debug!("shell connection ended: {e}");
                            }
                            active.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    tracing::warn!("cannot start a shell connection thread");
                }
            }
        })?;
    Ok(())
}

/// Serves one connection: a command per line until EOF.
fn serve<R: Read>(
    reader: std::io::Result<BufReader<R>>,
    mut out: impl Write,
) -> std::io::Result<()> {
    let mut reader = reader?;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            out.write_all(b"ERROR line too long (max 4096 bytes)\nEXIT 2\n")?;
            return Ok(());
        }
        let cmd = String::from_utf8_lossy(&line).trim().to_string();
        if cmd.is_empty() {
            continue;
        }
        let (output, code) = run(&cmd);
        out.write_all(&output)?;
        if !output.is_empty() && !output.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        writeln!(out, "EXIT {code}")?;
        out.flush()?;
    }
}

/// Runs `sh -c cmd` with stderr merged into stdout; returns the (capped) output and the exit
/// code (124 on timeout, 127 when sh cannot start).
pub fn run(cmd: &str) -> (Vec<u8>, i32) {
    let script = format!("exec 2>&1\n{cmd}");
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (format!("cannot start /bin/sh: {e}").into_bytes(), 127),
    };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = MAX_OUTPUT.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    });
    let code = match wait_timeout(&mut child, COMMAND_TIMEOUT) {
        Ok(Some(status)) => status.code().unwrap_or(128),
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            124
        }
        Err(e) => {
            tracing::warn!("shell: cannot wait for {cmd:?} ({e}); killed it");
            let _ = child.kill();
            let _ = child.wait();
            127
        }
    };
    // A background grandchild may hold the pipe open; the reader ends when it exits.
    let output = reader.join().unwrap_or_default();
    (output, code)
}

/// Waits up to `timeout` for `child` to exit (Ok(None) on timeout), asleep in poll() on a
/// pidfd: no periodic wakeups while a command runs (an idle phone must not tick for it).
fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let pid = libc::pid_t::try_from(child.id()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a fresh fd that we now own (fds fit in c_int).
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut p = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut p, 1, ms) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_commands_with_exit_codes() {
        let (out, code) = run("echo hi; echo err >&2; exit 3");
        assert_eq!(String::from_utf8_lossy(&out), "hi\nerr\n");
        assert_eq!(code, 3);
    }

    #[test]
    fn waits_without_polling_and_times_out() {
        let spawn = |args: &[&str]| Command::new(args[0]).args(&args[1..]).spawn().unwrap();
        let mut quick = spawn(&["sh", "-c", "exit 4"]);
        let status = wait_timeout(&mut quick, Duration::from_secs(10)).unwrap();
        assert_eq!(status.and_then(|s| s.code()), Some(4));
        let mut slow = spawn(&["sleep", "10"]);
        let t0 = Instant::now();
        assert!(wait_timeout(&mut slow, Duration::from_millis(200))
            .unwrap()
            .is_none());
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        slow.kill().unwrap();
        slow.wait().unwrap();
    }

    #[test]
    fn output_is_capped() {
        let (out, code) = run("head -c 3000000 /dev/zero");
        assert_eq!(out.len(), MAX_OUTPUT);
        assert_eq!(code, 0);
    }

    #[test]
    fn serves_lines_and_rejects_long_ones() {
        let input = b"echo one\n\necho two\n".to_vec();
        let mut out = Vec::new();
        serve(Ok(BufReader::new(&input[..])), &mut out).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "one\nEXIT 0\ntwo\nEXIT 0\n");
        let long = vec![b'x'; MAX_LINE + 10];
        let mut out = Vec::new();
        serve(Ok(BufReader::new(&long[..])), &mut out).unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("ERROR line too long"));
    }
}
