//! Rate limiting for log lines a guest (or a host client) can trigger at will, e.g. one per
//! malformed packet or per write to a bad register: the log must not become the denial of
//! service. One limiter for the whole VMM: devices that share a count across their warnings
//! hold a [`LogLimit`]; any other call site uses [`guest_warn!`](crate::guest_warn) (or
//! [`guest_log!`](crate::guest_log) for another level), which keeps a count per call site.
//! The agent caps each phone's log file on top (control/src/agent/logcap.rs).

use std::sync::atomic::{AtomicU64, Ordering};

/// Occurrences always logged.
pub const FIRST: u64 = 16;
/// After that, log one occurrence in this many.
pub const EVERY: u64 = 4096;

/// Counts occurrences; lets the first [`FIRST`] through, then one in every [`EVERY`].
#[derive(Debug, Default)]
pub struct LogLimit {
    seen: AtomicU64,
}

impl LogLimit {
    /// A limiter that has seen nothing (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            seen: AtomicU64::new(0),
        }
    }

    /// Record an occurrence; `Some(occurrences so far)` when this one should be logged (log
    /// the number, so suppressed lines still show in the count).
    pub fn record(&self) -> Option<u64> {
        let seen = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        (seen <= FIRST || seen % EVERY == 0).then_some(seen)
    }
}

#[doc(hidden)]
pub use tracing as __tracing;

/// `tracing::<level>!` behind a per-call-site [`LogLimit`], with an `occurrences` field:
/// `guest_log!(debug, addr, "unclaimed MMIO write")`.
#[macro_export]
macro_rules! guest_log {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(occurrences) = LIMIT.record() {
            $crate::log_limit::__tracing::$level!(occurrences, $($arg)+);
        }
    }};
}

/// A guest-triggered warning, rate limited per call site ([`guest_log!`](crate::guest_log)).
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {
        $crate::guest_log!(warn, $($arg)+)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_sampled() {
        let limit = LogLimit::new();
        let logged: Vec<u64> = (0..3 * EVERY).filter_map(|_| limit.record()).collect();
        assert_eq!(logged.len() as u64, FIRST + 3);
        assert_eq!(logged[FIRST as usize..], [EVERY, 2 * EVERY, 3 * EVERY]);
    }
}
