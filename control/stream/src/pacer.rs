//! When to encode: only after damage, no faster than the profile's fps cap, and never while the
//! screen is idle (an idle phone costs no encoder CPU). A viewer that saw nothing for a while
//! gets the last access unit again so players that wait for frames keep showing the screen.

use std::time::{Duration, Instant};

/// What the streaming loop should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacerAction {
    /// Pixels changed and the fps budget allows a frame: convert + encode now.
    Encode,
    /// Nothing changed for a while: send the last encoded access unit again (no encoding).
    Resend,
    /// Something is pending; check again after this long.
    WaitFor(Duration),
    /// Nothing to do until the next damage event.
    Idle,
}

/// Damage-driven frame pacing with an fps cap.
pub struct EncodePacer {
    min_interval: Duration,
    resend_after: Duration,
    dirty: bool,
    last_sent: Option<Instant>,
    resent: bool,
}

impl EncodePacer {
    /// Pace to at most `max_fps` frames/s; resend the last frame once after `resend_after` idle.
    pub fn new(max_fps: f32, resend_after: Duration) -> Self {
        let fps = if max_fps.is_finite() {
            max_fps.clamp(1.0, 120.0)
        } else {
            30.0
        };
        Self {
            min_interval: Duration::from_micros((1e6 / fps as f64).round() as u64),
            resend_after,
            dirty: false,
            last_sent: None,
            resent: false,
        }
    }

    /// The VMM reported a damaged region (any size: the whole frame is encoded).
    pub fn damage(&mut self) {
        self.dirty = true;
    }

    /// Decide what to do at `now`; `Encode`/`Resend` count as sending a frame.
    pub fn poll(&mut self, now: Instant) -> PacerAction {
        let since = self.last_sent.map(|t| now.saturating_duration_since(t));
        if self.dirty {
            match since {
                Some(s) if s < self.min_interval => {
                    return PacerAction::WaitFor(self.min_interval - s)
                }
                _ => {
                    self.dirty = false;
                    self.resent = false;
                    self.last_sent = Some(now);
                    return PacerAction::Encode;
                }
            }
        }
        match since {
            Some(s) if !self.resent && s >= self.resend_after => {
                self.resent = true;
                self.last_sent = Some(now);
                PacerAction::Resend
            }
            Some(s) if !self.resent => PacerAction::WaitFor(self.resend_after - s),
            _ => PacerAction::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_screen_encodes_nothing() {
        let mut p = EncodePacer::new(30.0, Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(
                p.poll(t0 + Duration::from_millis(i * 50)),
                PacerAction::Idle
            );
        }
    }

    #[test]
    fn damage_is_capped_at_the_fps_limit() {
        let mut p = EncodePacer::new(10.0, Duration::from_secs(5));
        let t0 = Instant::now();
        let mut encodes = 0;
        for ms in 0..1000u64 {
            p.damage(); // damage every millisecond
            if p.poll(t0 + Duration::from_millis(ms)) == PacerAction::Encode {
                encodes += 1;
            }
        }
        assert_eq!(encodes, 10, "10 fps cap over one second");
    }

    #[test]
    fn pending_damage_waits_then_encodes_once_and_resends_once_when_idle() {
        let mut p = EncodePacer::new(20.0, Duration::from_millis(500));
        let t0 = Instant::now();
        p.damage();
        assert_eq!(p.poll(t0), PacerAction::Encode);
        p.damage();
        assert_eq!(
            p.poll(t0 + Duration::from_millis(10)),
            PacerAction::WaitFor(Duration::from_millis(40))
        );
        assert_eq!(p.poll(t0 + Duration::from_millis(50)), PacerAction::Encode);
        assert!(matches!(
            p.poll(t0 + Duration::from_millis(60)),
            PacerAction::WaitFor(_)
        ));
        assert_eq!(p.poll(t0 + Duration::from_millis(600)), PacerAction::Resend);
        assert_eq!(p.poll(t0 + Duration::from_millis(5000)), PacerAction::Idle);
    }

    #[test]
    fn absurd_fps_values_are_clamped() {
        let mut p = EncodePacer::new(f32::NAN, Duration::from_secs(1));
        p.damage();
        assert_eq!(p.poll(Instant::now()), PacerAction::Encode);
        let _ = EncodePacer::new(1e9, Duration::from_secs(1));
        let _ = EncodePacer::new(-5.0, Duration::from_secs(1));
    }
}
