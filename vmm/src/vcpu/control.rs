//! Run/pause/stop coordination between the VM controller and the vCPU threads.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// What the controller wants the vCPUs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Run the guest.
    Run,
    /// Park outside KVM_RUN until resumed.
    Pause,
    /// Leave the run loop for good.
    Stop,
}

#[derive(Debug)]
struct State {
    request: Request,
    parked: usize,
}

/// Shared by the controller and every vCPU thread.
#[derive(Debug)]
pub struct RunControl {
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for RunControl {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                request: Request::Run,
                parked: 0,
            }),
            changed: Condvar::new(),
        }
    }
}

impl RunControl {
    /// The current request.
    pub fn request(&self) -> Request {
        self.lock().request
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set the request (the caller then kicks the vCPUs out of KVM_RUN).
    pub fn set(&self, request: Request) {
        let mut s = self.lock();
        if s.request != Request::Stop {
            s.request = request;
        }
        self.changed.notify_all();
    }

    /// Called by a vCPU thread between runs: parks while paused; returns false when it must
    /// stop.
    pub fn may_run(&self) -> bool {
        let mut s = self.lock();
        if s.request == Request::Pause {
            s.parked += 1;
            self.changed.notify_all();
            s = self
                .changed
                .wait_while(s, |s| s.request == Request::Pause)
                .unwrap_or_else(|p| p.into_inner());
            s.parked -= 1;
            self.changed.notify_all();
        }
        s.request == Request::Run
    }

    /// Wait until `n` vCPUs are parked (a pause took effect), up to `timeout`.
    pub fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.parked < n && s.request == Request::Pause)
            .unwrap_or_else(|p| p.into_inner());
        s.parked >= n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn pause_parks_and_resume_releases() {
        let c = Arc::new(RunControl::default());
        c.set(Request::Pause);
        let t = {
            let c = c.clone();
            std::thread::spawn(move || c.may_run())
        };
        assert!(c.wait_parked(1, Duration::from_secs(5)));
        c.set(Request::Run);
        assert!(t.join().unwrap());
    }

    #[test]
    fn stop_is_final() {
        let c = RunControl::default();
        c.set(Request::Stop);
        c.set(Request::Run);
        assert!(!c.may_run());
        assert_eq!(c.request(), Request::Stop);
    }
}
