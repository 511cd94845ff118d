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
    /// Bumped by the controller to ask every parked vCPU to save its state once.
    save_epoch: u64,
    /// vCPUs that have saved their state for the current `save_epoch`.
    saved: usize,
}

/// What a parked vCPU thread is asked to do (see [`RunControl::may_run_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkedJob {
    /// It just parked: e.g. tell KVM the guest was paused (KVM_KVMCLOCK_CTRL).
    Parked,
    /// Save its state for a snapshot.
    Save,
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
                save_epoch: 0,
                saved: 0,
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
        self.may_run_with(|_| {})
    }

    /// [`may_run`](Self::may_run) that also runs `job` on the vCPU's own thread while parked:
    /// once on parking, and once per [`save_all`](Self::save_all) request (the vCPU's state is
    /// read by the thread that runs it).
    pub fn may_run_with(&self, mut job: impl FnMut(ParkedJob)) -> bool {
        let mut s = self.lock();
        if s.request == Request::Pause {
            s.parked += 1;
            let mut seen = s.save_epoch;
            drop(s);
            job(ParkedJob::Parked);
            s = self.lock();
            self.changed.notify_all();
            loop {
                s = self
                    .changed
                    .wait_while(s, |s| s.request == Request::Pause && s.save_epoch == seen)
                    .unwrap_or_else(|p| p.into_inner());
                if s.request != Request::Pause {
                    break;
                }
                seen = s.save_epoch;
                drop(s);
                job(ParkedJob::Save);
                s = self.lock();
                s.saved += 1;
                self.changed.notify_all();
            }
            s.parked -= 1;
            self.changed.notify_all();
        }
        s.request == Request::Run
    }

    /// Ask the `n` parked vCPUs to save their state and wait until all have, up to `timeout`.
    /// Call only after [`wait_parked`](Self::wait_parked) succeeded.
    pub fn save_all(&self, n: usize, timeout: Duration) -> bool {
        let mut s = self.lock();
        s.save_epoch += 1;
        s.saved = 0;
        self.changed.notify_all();
        let (s, _) = self
            .changed
            .wait_timeout_while(s, timeout, |s| s.saved < n && s.request == Request::Pause)
            .unwrap_or_else(|p| p.into_inner());
        s.saved >= n
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
    fn parked_vcpus_save_on_request_and_only_then() {
        let c = Arc::new(RunControl::default());
        c.set(Request::Pause);
        let jobs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (c, jobs) = (c.clone(), jobs.clone());
                std::thread::spawn(move || c.may_run_with(|j| jobs.lock().unwrap().push(j)))
            })
            .collect();
        assert!(c.wait_parked(2, Duration::from_secs(5)));
        assert!(c.save_all(2, Duration::from_secs(5)));
        assert!(c.save_all(2, Duration::from_secs(5)));
        c.set(Request::Run);
        for t in threads {
            assert!(t.join().unwrap());
        }
        let jobs = jobs.lock().unwrap();
        let count = |j| jobs.iter().filter(|&&x| x == j).count();
        assert_eq!((count(ParkedJob::Parked), count(ParkedJob::Save)), (2, 4));
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
