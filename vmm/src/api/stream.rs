//! `GET /framebuffer/events`: a chunked HTTP response carrying one JSON line per damage event,
//! until the client hangs up or the display goes away.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cloudphone_display::framebuffer::RecvError;
use cloudphone_display::DamageReceiver;

/// Most event streams open at once (each holds a thread and a subscription).
pub const MAX_STREAMS: usize = 16;
/// How often an idle stream checks whether its client is still there.
const IDLE_CHECK: Duration = Duration::from_millis(500);

static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// A slot among the [`MAX_STREAMS`]; freed when dropped.
pub struct StreamSlot(());

impl StreamSlot {
    /// A slot, or `None` when [`MAX_STREAMS`] streams are already open.
    pub fn acquire() -> Option<Self> {
        OPEN_STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the peer closed its end (a non-blocking peek reads end-of-file or fails).
fn peer_gone(stream: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a local buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        _ => !matches!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ),
    }
}

fn chunk<W: Write>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

/// Send the response head and then every damage event from `rx` until the client hangs up, a
/// write fails (the socket's write timeout bounds a client that stops reading) or the
/// framebuffer is closed (then the stream ends cleanly).
pub fn serve_damage(stream: &mut UnixStream, rx: DamageReceiver, _slot: StreamSlot) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    loop {
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(damage) => {
                let mut line = match serde_json::to_vec(&damage) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serialize a damage event");
                        return;
                    }
                };
                line.push(b'\n');
                if chunk(stream, &line).is_err() {
                    return;
                }
            }
            Err(RecvError::Timeout) => {
                if peer_gone(stream) {
                    return;
                }
            }
            Err(RecvError::Closed) => {
                let _ = stream.write_all(b"0\r\n\r\n");
                return;
            }
        }
    }
}
