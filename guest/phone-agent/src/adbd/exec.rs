//! Commands for `shell:` and `exec:`: the built-in phone commands ([`super::commands`]) or
//! `/bin/sh -c` (busybox in the guest) in its own process group, with stdin, stdout and
//! stderr pumped through the stream. The client closing the stream kills the group (a raw
//! stream after [`RAW_CLOSE_GRACE`], as its close is also stdin's end), so a command that
//! never ends lasts only as long as the client waits for it.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cloudphone_adb::shell as v2;

use super::commands;
use super::stream::{StreamReader, StreamWriter};
use super::Config;

/// After a raw (`shell:` v1 or `exec:`) stream is closed, how long its command may run on.
const RAW_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How command output reaches the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `shell:` v1: stdout and stderr both raw, no exit code.
    Merged,
    /// `exec:`: stdout raw (binary-safe); stderr goes to the log.
    StdoutOnly,
    /// `shell,v2`: framed stdout/stderr and an exit packet.
    ShellV2,
}

/// The client side of a running command: framed output, and whether the client has gone.
pub struct Output {
    writer: Mutex<StreamWriter>,
    framing: Framing,
    closed: Arc<AtomicBool>,
}

impl Output {
    fn send(&self, id: u8, data: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match self.framing {
            Framing::ShellV2 => w.write_all(&v2::encode(id, data)),
            Framing::StdoutOnly if id == v2::ID_STDERR => {
                tracing::info!("exec stderr: {}", String::from_utf8_lossy(data).trim_end());
                Ok(())
            }
            _ if id == v2::ID_EXIT => Ok(()),
            _ => w.write_all(data),
        }
    }

    /// Sends command output.
    pub fn stdout(&self, data: &[u8]) -> std::io::Result<()> {
        self.send(v2::ID_STDOUT, data)
    }

    /// Sends an error message.
    pub fn stderr(&self, data: &[u8]) -> std::io::Result<()> {
        self.send(v2::ID_STDERR, data)
    }

    /// True once the client closed the stream (long-running commands stop).
    pub fn client_gone(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Runs `command` with the stream as its terminal-less stdio, then closes the stream.
pub fn run(
    command: &str,
    framing: Framing,
    reader: StreamReader,
    writer: StreamWriter,
    config: &Arc<Config>,
) -> anyhow::Result<()> {
    let out = Output {
        writer: Mutex::new(writer),
        framing,
        closed: Arc::new(AtomicBool::new(false)),
    };
    let code = match commands::parse(command) {
        Some(builtin) => {
            watch_for_close(reader, framing, out.closed.clone(), None);
            commands::run(builtin, &out, config)
        }
        None => spawn_shell(command, framing, reader, &out)?,
    };
    out.send(v2::ID_EXIT, &[code.clamp(0, 255) as u8])?;
    Ok(())
}

/// Runs `sh -c command` (or an interactive `sh` for an empty command); returns its exit code.
fn spawn_shell(
    command: &str,
    framing: Framing,
    reader: StreamReader,
    out: &Output,
) -> anyhow::Result<i32> {
    let mut cmd = Command::new("/bin/sh");
    if !command.trim().is_empty() {
        cmd.arg("-c").arg(command);
    }
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            out.stderr(format!("cannot start /bin/sh: {e}\n").as_bytes())?;
            return Ok(127);
        }
    };
    let group = child.id() as libc::pid_t;
    let finished = Arc::new(AtomicBool::new(false));
    let stdin = child.stdin.take();
    watch_for_close(
        reader,
        framing,
        out.closed.clone(),
        Some((group, stdin, finished.clone())),
    );
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let status = std::thread::scope(|s| {
        let pump = |pipe: &mut dyn Read, id: u8| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.send(id, &buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        };
        if let Some(e) = stderr.as_mut() {
            s.spawn(move || pump(e, v2::ID_STDERR));
        }
        if let Some(o) = stdout.as_mut() {
            pump(o, v2::ID_STDOUT);
        }
        child.wait()
    });
    finished.store(true, Ordering::SeqCst);
    let status = status?;
    Ok(status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
    }))
}

/// Feeds the client's bytes to the command's stdin (raw, or v2 STDIN/CLOSE_STDIN packets) on
/// a thread; when the client closes the stream, marks it gone and kills the command's
/// process group unless it already finished.
fn watch_for_close(
    mut reader: StreamReader,
    framing: Framing,
    closed: Arc<AtomicBool>,
    child: Option<(
        libc::pid_t,
        Option<std::process::ChildStdin>,
        Arc<AtomicBool>,
    )>,
) {
    let spawned = std::thread::Builder::new()
        .name("adbd-stdin".into())
        .spawn(move || {
            let (group, mut stdin, finished) = match child {
                Some((g, s, f)) => (Some(g), s, Some(f)),
                None => (None, None, None),
            };
            loop {
                let data = if framing == Framing::ShellV2 {
                    match v2::read(&mut reader) {
                        Ok((v2::ID_STDIN, d)) => d,
                        Ok((v2::ID_CLOSE_STDIN, _)) => {
                            stdin = None;
                            continue;
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                } else {
                    let mut buf = vec![0u8; 64 * 1024];
                    match reader.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            buf
                        }
                    }
                };
                if let Some(s) = stdin.as_mut() {
                    if s.write_all(&data).is_err() {
                        stdin = None;
                    }
                }
            }
            closed.store(true, Ordering::SeqCst);
            // A raw stream's close is also its stdin's end (`adb exec-in 'cat > f' < file`):
            // the command gets EOF and a moment to finish before the group is killed.
            drop(stdin);
            if let (Some(group), Some(finished)) = (group, finished) {
                if framing != Framing::ShellV2 {
                    let deadline = std::time::Instant::now() + RAW_CLOSE_GRACE;
                    while !finished.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
                if !finished.load(Ordering::SeqCst) {
                    // SAFETY: signals our own child's process group, which still exists.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                }
            }
        });
    if spawned.is_err() {
        tracing::warn!("adbd: cannot start a stdin thread");
    }
}
