//! One worker thread per activated device: an epoll loop over the queue eventfds and the
//! device's backend fds, off the vCPU threads. A handler error or panic marks the device
//! DEVICE_NEEDS_RESET instead of taking the VMM down.

use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::VirtioInterrupt;

/// Token reserved for the worker's own stop eventfd.
const STOP_TOKEN: u64 = u64::MAX;

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
        let ctx = WorkerContext {
            epoll: Epoll::new()?,
        };
        ctx.add(
            std::os::fd::AsRawFd::as_raw_fd(&stop),
            EventSet::IN,
            STOP_TOKEN,
        )?;
        handler.init(&ctx)?;
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                run_loop(&thread_name, &ctx, &mut handler, interrupt.as_ref());
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Ask the worker to exit and wait for it.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
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

fn run_loop<H: WorkerHandler>(
    name: &str,
    ctx: &WorkerContext,
    handler: &mut H,
    interrupt: &dyn VirtioInterrupt,
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
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                handler.handle(ctx, token, event.event_set())
            }));
            let reason = match outcome {
                Ok(Ok(())) => continue,
                Ok(Err(reason)) => reason,
                Err(_) => "device worker panicked".to_string(),
            };
            tracing::error!(worker = name, %reason, "device failed; marked DEVICE_NEEDS_RESET");
            interrupt.signal_needs_reset();
            wait_for_stop(ctx);
            return;
        }
    }
}

/// After a failure the device handles nothing more (its fds may stay readable, so keep only the
/// stop eventfd) until the transport resets it.
fn wait_for_stop(ctx: &WorkerContext) {
    let mut events = [EpollEvent::default(); 8];
    loop {
        match ctx.epoll.wait(-1, &mut events) {
            Ok(n) if events[..n].iter().any(|e| e.data() == STOP_TOKEN) => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}
