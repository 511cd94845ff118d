//! A stream's counters and latency percentiles: what tests and the stream stats route read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::lock;

/// Counters of one phone's stream (what tests and metrics look at).
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Frames encoded (damage-driven and refreshes; one per codec in use).
    pub encoded: AtomicU64,
    /// Of those, keyframes.
    pub keyframes: AtomicU64,
    /// Encoders created (one per codec in use, again after a geometry change or a failure).
    pub encoders: AtomicU64,
    /// Input messages sent to the VMM.
    pub input_forwarded: AtomicU64,
    /// Input messages refused (watch-only viewer, malformed, VMM backlog).
    pub input_dropped: AtomicU64,
    /// Current target bitrate (bits/s).
    pub bitrate: AtomicU64,
    /// Input accepted from the lease holder → the next screen damage from the phone: the
    /// phone's side of touch-to-photon (delivery to the VMM, guest input handling, drawing).
    pub input_to_damage: LatencyWindow,
    /// Time to convert and encode one frame: the host's main cost per frame.
    pub encode: LatencyWindow,
}

impl StreamStats {
    /// Add one to `counter` (counters are independent; no ordering needed).
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counters and latency percentiles as JSON (the stream stats route, tests).
    pub fn snapshot(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "encoded": n(&self.encoded),
            "keyframes": n(&self.keyframes),
            "encoders": n(&self.encoders),
            "input_forwarded": n(&self.input_forwarded),
            "input_dropped": n(&self.input_dropped),
            "bitrate": n(&self.bitrate),
            "input_to_damage_ms": self.input_to_damage.summary(),
            "encode_ms": self.encode.summary(),
        })
    }
}

/// The last [`LatencyWindow::CAPACITY`] samples of one latency, for percentiles.
#[derive(Debug, Default)]
pub struct LatencyWindow(Mutex<VecDeque<Duration>>);

impl LatencyWindow {
    /// Samples kept (older ones fall out).
    pub const CAPACITY: usize = 512;

    /// Add one sample.
    pub fn record(&self, sample: Duration) {
        let mut w = lock(&self.0);
        if w.len() == Self::CAPACITY {
            w.pop_front();
        }
        w.push_back(sample);
    }

    /// `{count, p50, p95, max}` in milliseconds (`null` percentiles before any sample).
    pub fn summary(&self) -> serde_json::Value {
        let mut v: Vec<f64> = lock(&self.0)
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        v.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
                .copied()
        };
        serde_json::json!({ "count": v.len(), "p50": pct(0.5), "p95": pct(0.95), "max": v.last() })
    }
}
