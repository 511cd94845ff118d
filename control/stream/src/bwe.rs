//! Sending bitrate from the transport's feedback (RTCP receiver-report loss and REMB/TWCC
//! estimates): back off quickly on loss, probe up slowly when the path is clean.

use crate::codec::{MAX_BITRATE, MIN_BITRATE};

/// Loss above this fraction means the link is congested.
const CONGESTED_LOSS: f32 = 0.10;
/// Loss below this fraction means there is room to grow.
const CLEAN_LOSS: f32 = 0.02;
/// Multiplicative increase per clean feedback report.
const INCREASE: f32 = 1.08;

/// A loss-based AIMD controller capped by the receiver's estimate (REMB or a TWCC estimate).
pub struct BitrateController {
    bitrate: u32,
}

impl BitrateController {
    /// Start at `initial` bits/s (clamped to the encoder's range).
    pub fn new(initial: u32) -> Self {
        Self {
            bitrate: initial.clamp(MIN_BITRATE, MAX_BITRATE),
        }
    }

    /// The current target bitrate in bits/s.
    pub fn bitrate(&self) -> u32 {
        self.bitrate
    }

    /// Fold one feedback report in: `loss` is the fraction lost since the last report (0..=1;
    /// anything else is ignored as corrupt), `estimate` the receiver's bandwidth estimate if it
    /// sent one. Returns the new target.
    pub fn on_feedback(&mut self, loss: f32, estimate: Option<u32>) -> u32 {
        let mut next = self.bitrate as f32;
        if loss.is_finite() && (0.0..=1.0).contains(&loss) {
            if loss > CONGESTED_LOSS {
                next *= 1.0 - 0.5 * loss;
            } else if loss < CLEAN_LOSS {
                next *= INCREASE;
            }
        }
        let mut next = next as u32;
        if let Some(cap) = estimate {
            next = next.min(cap);
        }
        self.bitrate = next.clamp(MIN_BITRATE, MAX_BITRATE);
        self.bitrate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link of `capacity` bits/s drops whatever is sent above it.
    fn simulate(capacity: u32, start: u32, reports: usize) -> Vec<u32> {
        let mut c = BitrateController::new(start);
        (0..reports)
            .map(|_| {
                let rate = c.bitrate() as f32;
                let loss = ((rate - capacity as f32) / rate).max(0.0);
                c.on_feedback(loss, None)
            })
            .collect()
    }

    #[test]
    fn constrained_link_lowers_the_bitrate_to_near_capacity() {
        let rates = simulate(1_000_000, 6_000_000, 60);
        let tail = &rates[40..];
        let avg = tail.iter().map(|&r| r as f64).sum::<f64>() / tail.len() as f64;
        eprintln!(
            "bwe: 6 Mb/s start on a 1 Mb/s link settles around {:.0} kb/s",
            avg / 1000.0
        );
        assert!(rates[5] < 3_000_000, "backs off quickly: {:?}", &rates[..6]);
        assert!(
            (800_000.0..=1_300_000.0).contains(&avg),
            "settles near capacity, got {avg}"
        );
    }

    #[test]
    fn clean_link_probes_up_and_estimate_caps() {
        let rates = simulate(50_000_000, 500_000, 30);
        assert!(rates[29] > 4_000_000);
        let mut c = BitrateController::new(5_000_000);
        assert_eq!(c.on_feedback(0.0, Some(700_000)), 700_000);
    }

    #[test]
    fn corrupt_feedback_is_ignored_and_bounds_hold() {
        let mut c = BitrateController::new(1_000_000);
        assert_eq!(c.on_feedback(f32::NAN, None), 1_000_000);
        assert_eq!(c.on_feedback(7.0, None), 1_000_000);
        assert_eq!(c.on_feedback(1.0, Some(0)), MIN_BITRATE);
        let mut c = BitrateController::new(u32::MAX);
        assert_eq!(c.bitrate(), MAX_BITRATE);
        assert_eq!(c.on_feedback(0.0, None), MAX_BITRATE);
    }
}
