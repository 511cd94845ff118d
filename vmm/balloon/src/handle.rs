//! [`BalloonHandle`]: how the VMM (API `PUT/GET /balloon`) steers the balloon while the
//! device runs.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cloudphone_virtio::{InterruptCause, VirtioInterrupt};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::stats::BalloonStats;

/// 4 KiB balloon pages per MiB.
const PAGES_PER_MIB: u64 = 256;

/// Why a balloon request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    /// The target is larger than the guest's memory.
    #[error("balloon target {target_mib} MiB exceeds the guest's {guest_mib} MiB of memory")]
    TargetTooLarge { target_mib: u64, guest_mib: u64 },
}

/// What `GET /balloon` reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BalloonStatus {
    /// Requested balloon size (memory taken from the guest), MiB.
    pub target_mib: u64,
    /// Balloon size the guest driver reports having reached, MiB.
    pub actual_mib: u64,
    /// Latest guest memory statistics (empty until the driver sent any).
    pub stats: BalloonStats,
    /// Whether `stats` arrived after this request (the guest answered in time).
    pub stats_fresh: bool,
    /// Bytes of guest memory given back to the host through inflate and free page reporting.
    pub released_bytes: u64,
}

/// State shared by the device, its worker and every handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    stats_arrived: Condvar,
    /// Written by handles to ask the worker to return the stats buffer (a stats request).
    pub(crate) stats_request: EventFd,
    pub(crate) guest_mib: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) target_pages: u32,
    pub(crate) actual_pages: u32,
    pub(crate) stats: BalloonStats,
    pub(crate) stats_seq: u64,
    pub(crate) released_bytes: u64,
    /// The stats buffer the driver gave us (its head), returned when the host wants new
    /// stats; kept here so a snapshot can hand it to the restored worker.
    pub(crate) held_stats: Option<u16>,
    /// Set while the device is activated, for config-change interrupts.
    pub(crate) interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

impl Shared {
    pub(crate) fn new(guest_mib: u64) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            state: Mutex::new(State::default()),
            stats_arrived: Condvar::new(),
            stats_request: EventFd::new(libc::EFD_NONBLOCK)?,
            guest_mib,
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker parsed a new stats buffer.
    pub(crate) fn publish_stats(&self, stats: BalloonStats) {
        let mut s = self.lock();
        s.stats = stats;
        s.stats_seq += 1;
        self.stats_arrived.notify_all();
    }
}

/// A cloneable remote control for one balloon device.
#[derive(Clone)]
pub struct BalloonHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BalloonHandle {
    /// Ask the guest to grow or shrink the balloon to `mib` MiB (memory taken from the guest).
    /// Updates `num_pages` in config space and raises a config interrupt if the driver runs.
    pub fn set_target_mib(&self, mib: u64) -> Result<(), BalloonError> {
        let guest_mib = self.shared.guest_mib;
        if mib > guest_mib {
            return Err(BalloonError::TargetTooLarge {
                target_mib: mib,
                guest_mib,
            });
        }
        let interrupt = {
            let mut s = self.shared.lock();
            // guest_mib is bounded by the VMM's memory size, so this fits in u32 pages up to
            // 16 TiB; clamp anyway rather than wrap.
            s.target_pages = u32::try_from(mib * PAGES_PER_MIB).unwrap_or(u32::MAX);
            s.interrupt.clone()
        };
        if let Some(irq) = interrupt {
            if let Err(e) = irq.trigger(InterruptCause::Config) {
                tracing::warn!(error = %e, "balloon: config interrupt failed");
            }
        }
        tracing::info!(target_mib = mib, "balloon target set");
        Ok(())
    }

    /// Current target, MiB.
    pub fn target_mib(&self) -> u64 {
        u64::from(self.shared.lock().target_pages) / PAGES_PER_MIB
    }

    /// Ask the guest for fresh statistics, wait up to `wait` for them, and report the state.
    pub fn status(&self, wait: Duration) -> BalloonStatus {
        let seq = self.shared.lock().stats_seq;
        let _ = self.shared.stats_request.write(1);
        let deadline = Instant::now() + wait;
        let mut s = self.shared.lock();
        while s.stats_seq == seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .shared
                .stats_arrived
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Self::report(&s, seq)
    }

    /// The state as last known, without asking the guest for anything (`stats_fresh` false).
    pub fn snapshot(&self) -> BalloonStatus {
        let s = self.shared.lock();
        Self::report(&s, s.stats_seq)
    }

    fn report(s: &State, asked_at_seq: u64) -> BalloonStatus {
        BalloonStatus {
            target_mib: u64::from(s.target_pages) / PAGES_PER_MIB,
            actual_mib: u64::from(s.actual_pages) / PAGES_PER_MIB,
            stats: s.stats.clone(),
            stats_fresh: s.stats_seq != asked_at_seq,
            released_bytes: s.released_bytes,
        }
    }
}
