//! Rate limiting for warnings a guest (or a host client) can trigger at will, e.g. one per
//! malformed packet: the log must not become the denial of service.

/// Counts occurrences; lets the first few through, then one in every [`EVERY`].
#[derive(Default)]
pub(crate) struct WarnLimit {
    seen: u64,
}

/// Occurrences always logged.
const FIRST: u64 = 16;
/// After that, log one occurrence in this many.
const EVERY: u64 = 4096;

impl WarnLimit {
    /// Record an occurrence; true when it should be logged.
    // `is_multiple_of` needs Rust 1.87; the workspace MSRV is 1.85.
    #[allow(clippy::manual_is_multiple_of)]
    pub fn allow(&mut self) -> bool {
        self.seen += 1;
        self.seen <= FIRST || self.seen % EVERY == 0
    }

    /// Occurrences so far (log it, so suppressed ones are visible in the count).
    pub fn count(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_sampled() {
        let mut w = WarnLimit::default();
        let logged = (0..3 * EVERY).filter(|_| w.allow()).count() as u64;
        assert_eq!(logged, FIRST + 3);
        assert_eq!(w.count(), 3 * EVERY);
    }
}
