//! An [`MsiSink`] that counts interrupts per vector, standing in for the VMM's irqfds.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::pci::{MsiSink, MsixMessage};

#[derive(Default)]
struct State {
    counts: HashMap<u16, u64>,
    /// Vectors fired since the driver last acknowledged (see `take_fired`).
    fired: BTreeSet<u16>,
    programmed: HashMap<u16, MsixMessage>,
}

/// Counts MSI-X deliveries per vector and remembers the last programmed message of each.
#[derive(Default)]
pub struct CountingMsiSink {
    state: Mutex<State>,
    changed: Condvar,
}

impl CountingMsiSink {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Interrupts delivered on `vector` so far.
    pub fn count(&self, vector: u16) -> u64 {
        self.state().counts.get(&vector).copied().unwrap_or(0)
    }

    /// Interrupts delivered on all vectors so far.
    pub fn total(&self) -> u64 {
        self.state().counts.values().sum()
    }

    /// The message last programmed for `vector` (None if the guest never touched it).
    pub fn message(&self, vector: u16) -> Option<MsixMessage> {
        self.state().programmed.get(&vector).copied()
    }

    /// Vectors fired since the previous call (what an interrupt handler would have seen).
    pub fn take_fired(&self) -> Vec<u16> {
        std::mem::take(&mut self.state().fired)
            .into_iter()
            .collect()
    }

    /// Wait until `vector` has fired more than `count` times; false on timeout.
    pub fn wait_for(&self, vector: u16, count: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if state.counts.get(&vector).copied().unwrap_or(0) > count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl MsiSink for CountingMsiSink {
    fn program(&self, vector: u16, msg: MsixMessage) {
        self.state().programmed.insert(vector, msg);
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        let mut state = self.state();
        *state.counts.entry(vector).or_default() += 1;
        state.fired.insert(vector);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }
}
