//! The `logcat` buffer: the agent's own log lines (tracing, teed here by [`TeeWriter`]) and
//! the output of launched apps, in a bounded ring that `adb logcat` dumps or follows.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Lines kept (older ones are dropped, as logcat's ring buffer does).
const CAPACITY: usize = 4096;
/// Longest line kept; longer ones are cut.
const MAX_LINE: usize = 4096;

struct Ring {
    lines: Mutex<(u64, VecDeque<String>)>,
    grew: Condvar,
}

fn ring() -> &'static Ring {
    static RING: OnceLock<Ring> = OnceLock::new();
    RING.get_or_init(|| Ring {
        lines: Mutex::new((0, VecDeque::new())),
        grew: Condvar::new(),
    })
}

/// Appends one line (tagged by its source, e.g. `app/clock`).
pub fn push(tag: &str, text: &str) {
    let mut line = format!("{tag}: {}", text.trim_end());
    line.truncate(line.floor_char_boundary(MAX_LINE));
    let r = ring();
    let mut g = r.lines.lock().unwrap_or_else(|p| p.into_inner());
    g.0 += 1;
    if g.1.len() == CAPACITY {
        g.1.pop_front();
    }
    g.1.push_back(line);
    r.grew.notify_all();
}

/// Lines with sequence number > `after`, and the newest sequence number; waits up to
/// `wait` for one to arrive when none is there yet.
pub fn since(after: u64, wait: Duration) -> (Vec<String>, u64) {
    let r = ring();
    let mut g = r.lines.lock().unwrap_or_else(|p| p.into_inner());
    if g.0 <= after && !wait.is_zero() {
        g = r
            .grew
            .wait_timeout(g, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    let (newest, lines) = (&g.0, &g.1);
    let first = newest - lines.len() as u64; // sequence number before the oldest kept line
    let skip = after.saturating_sub(first) as usize;
    (lines.iter().skip(skip).cloned().collect(), *newest)
}

/// Empties the buffer (`logcat -c`).
pub fn clear() {
    ring()
        .lines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .1
        .clear();
}

/// A tracing writer that copies each record to stderr and into the ring.
pub struct TeeWriter;

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for line in String::from_utf8_lossy(buf).lines() {
            push("agent", line);
        }
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TeeWriter {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_follows_new_lines() {
        let (_, start) = since(u64::MAX, Duration::ZERO);
        push("test", "one\n");
        push("test", "two");
        let (lines, newest) = since(start, Duration::ZERO);
        let ours: Vec<_> = lines.iter().filter(|l| l.starts_with("test: ")).collect();
        assert_eq!(ours, ["test: one", "test: two"]);
        let waiter = std::thread::spawn(move || since(newest, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        push("test", "three");
        assert!(waiter.join().unwrap().0.iter().any(|l| l == "test: three"));
    }
}
