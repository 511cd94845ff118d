//! One worker thread per activated device: an epoll loop over the queue eventfds and the
//! device's backend fds, off the vCPU threads. A handler error or panic marks the device
//! DEVICE_NEEDS_RESET instead of taking the VMM down.

use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::VirtioInterrupt;

/// Epoll tokens from this one up are the worker's own (stop, pause); handlers register their
/// fds under lower tokens.
pub const FIRST_RESERVED_TOKEN: u64 = u64::MAX - 1;
/// Token of the worker's stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;
/// Token of the worker's pause eventfd.
const PAUSE_TOKEN: u64 = FIRST_RESERVED_TOKEN;
/// How long [`DeviceWorker::pause`] waits for a handler to finish its current event.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause handshake between [`DeviceWorker::pause`] and the worker thread.
#[derive(Default)]
struct PauseState {
    /// The owner wants the worker paused.
    requested: bool,
    /// The worker is parked (between events, handling nothing).
    parked: bool,
}

#[derive(Default)]
struct Pause {
    state: Mutex<PauseState>,
    changed: Condvar,
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Worker side: park until the pause is lifted.
    fn park(&self) {
        let mut s = self.lock();
        s.parked = true;
        self.changed.notify_all();
        while s.requested {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.parked = false;
    }

    fn set_requested(&self, requested: bool) {
        self.lock().requested = requested;
        self.changed.notify_all();
    }
}

/// Lets a handler add or remove fds (e.g. new vsock connections) while it runs.
pub struct WorkerContext {
    epoll: Epoll,
}

impl WorkerContext {
    /// A context outside any worker thread, so tests can call a handler directly.
    #[cfg(any(test, feature = "testing"))]
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
        })
    }

    /// Watch `fd` for `events`; [`WorkerHandler::handle`] gets `token` when it fires.
    pub fn add(&self, fd: RawFd, events: EventSet, token: u64) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }
    /// Change the events watched on `fd`.
    pub fn modify(&self, fd: RawFd, events: EventSet, token: u64) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }
    /// Stop watching `fd`.
    pub fn remove(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

/// The device-specific half of a worker.
pub trait WorkerHandler: Send + 'static {
    /// Register the initial fds (queue eventfds, backend fds) with `ctx`.
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()>;
    /// An fd registered under `token` is ready with `events`. An `Err` is a device failure:
    /// it is logged, the device is marked needs-reset, and the worker stops handling events.
    fn handle(&mut self, ctx: &WorkerContext, token: u64, events: EventSet) -> Result<(), String>;
}

/// Devices hand their handler over boxed, which keeps [`crate::VirtioDevice`] object safe.
impl WorkerHandler for Box<dyn WorkerHandler> {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        (**self).init(ctx)
    }
    fn handle(&mut self, ctx: &WorkerContext, token: u64, events: EventSet) -> Result<(), String> {
        (**self).handle(ctx, token, events)
    }
}

/// A running device worker thread; dropping or [`stop`](Self::stop)ping it joins the thread.
pub struct DeviceWorker {
    stop: EventFd,
    pause: EventFd,
    paused: Arc<Pause>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceWorker {
    /// Spawn the worker thread `name` running `handler` until stopped.
    pub fn spawn<H: WorkerHandler>(
        name: &str,
        mut handler: H,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let pause = EventFd::new(libc::EFD_NONBLOCK)?;
        let ctx = WorkerContext {
            epoll: Epoll::new()?,
        };
        for (fd, token) in [(&stop, STOP_TOKEN), (&pause, PAUSE_TOKEN)] {
            ctx.add(std::os::fd::AsRawFd::as_raw_fd(fd), EventSet::IN, token)?;
        }
        handler.init(&ctx)?;
        let thread_name = name.to_string();
        let paused = Arc::new(Pause::default());
        let worker_pause = (pause.try_clone()?, paused.clone());
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let pause = Parking {
                    fd: &worker_pause.0,
                    state: &worker_pause.1,
                };
                run_loop(&thread_name, &ctx, &mut handler, interrupt.as_ref(), &pause);
            })?;
        Ok(Self {
            stop,
            pause,
            paused,
            thread: Some(thread),
        })
    }

    /// Park the worker between events (a snapshot needs the device idle: no chain half
    /// processed, no used-ring write racing the save). Returns false if it did not park
    /// within a few seconds (a handler stuck in its backend); the state saved then is that
    /// of its last completed operation.
    pub fn pause(&self) -> bool {
        self.paused.set_requested(true);
        let _ = self.pause.write(1);
        let s = self.paused.lock();
        let (s, _) = self
            .paused
            .changed
            .wait_timeout_while(s, PAUSE_TIMEOUT, |s| !s.parked)
            .unwrap_or_else(|p| p.into_inner());
        s.parked
    }

    /// Let a paused worker handle events again.
    pub fn unpause(&self) {
        self.paused.set_requested(false);
    }

    /// Ask the worker to exit and wait for it.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.unpause();
            let _ = self.stop.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        self.join();
    }
}

/// The worker thread's side of the pause handshake.
struct Parking<'a> {
    fd: &'a EventFd,
    state: &'a Pause,
}

impl Parking<'_> {
    fn park(&self) {
        let _ = self.fd.read();
        self.state.park();
    }
}

fn run_loop<H: WorkerHandler>(
    name: &str,
    ctx: &WorkerContext,
    handler: &mut H,
    interrupt: &dyn VirtioInterrupt,
    pause: &Parking,
) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match ctx.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(worker = name, error = %e, "epoll_wait failed; device stops");
                interrupt.signal_needs_reset();
                return;
            }
        };
        for event in &events[..n] {
            let token = event.data();
            if token == STOP_TOKEN {
                return;
            }
            if token == PAUSE_TOKEN {
                pause.park();
                continue;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                handler.handle(ctx, token, event.event_set())
            }));
            let reason = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => reason,
                Err(_) => "device worker panicked".to_string(),
            };
            // A guest can fail a device, reset it and fail it again, in a loop.
            crate::guest_log!(error, worker = name, %reason, "device failed; marked DEVICE_NEEDS_RESET");
            interrupt.signal_needs_reset();
            wait_for_stop(ctx, pause);
            return;
        }
    }
}

/// After a failure the device handles nothing more (its fds may stay readable, so keep only the
/// stop eventfd) until the transport resets it.
fn wait_for_stop(ctx: &WorkerContext, pause: &Parking) {
    let mut events = [EpollEvent::default(); 8];
    loop {
        match ctx.epoll.wait(-1, &mut events) {
            Ok(n) if events[..n].iter().any(|e| e.data() == STOP_TOKEN) => return,
            Ok(n) if events[..n].iter().any(|e| e.data() == PAUSE_TOKEN) => pause.park(),
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hostile::RecordingInterrupt;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts the events of one eventfd.
    struct Counter {
        fd: EventFd,
        seen: Arc<AtomicU32>,
    }

    impl WorkerHandler for Counter {
        fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
            ctx.add(self.fd.as_raw_fd(), EventSet::IN, 0)
        }
        fn handle(&mut self, _: &WorkerContext, _: u64, _: EventSet) -> Result<(), String> {
            let _ = self.fd.read();
            self.seen.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn wait_for(seen: &AtomicU32, n: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.load(Ordering::SeqCst) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "worker never handled event {n}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn paused_worker_handles_nothing_until_unpaused_and_still_stops() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = fd.try_clone().unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let handler = Counter {
            fd,
            seen: seen.clone(),
        };
        let interrupt = Arc::new(RecordingInterrupt::default());
        let worker = DeviceWorker::spawn("pause-test", handler, interrupt).unwrap();
        kick.write(1).unwrap();
        wait_for(&seen, 1);
        assert!(worker.pause());
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "no event handled while paused"
        );
        worker.unpause();
        wait_for(&seen, 2);
        assert!(worker.pause());
        worker.stop(); // a paused worker still stops (and joins)
    }
}
