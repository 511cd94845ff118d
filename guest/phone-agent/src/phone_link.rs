//! The link between adbd's threads and the agent's single-threaded main loop: requests
//! (screen captures, injected inputs) go over a channel and an eventfd wakes the loop's
//! poll(), so `adb shell input tap` is handled exactly where a virtio-input touch is.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;

use crate::adbd::Phone;
use crate::input::evdev::Input;

/// A request for the main loop.
pub enum Request {
    /// Encode the current screen as PNG and send it back.
    Screencap(Sender<anyhow::Result<Vec<u8>>>),
    /// Handle these inputs as if a device sent them.
    Inject(Vec<Input>),
}

/// adbd's handle on the phone.
pub struct AgentPhone {
    requests: Mutex<Sender<Request>>,
    wake: OwnedFd,
    size: (i32, i32),
}

/// The main loop's end: the eventfd to poll and the requests to drain when it fires.
pub struct Inbox {
    requests: Receiver<Request>,
    wake: OwnedFd,
}

/// Creates both ends for a `width` × `height` screen.
pub fn link(width: i32, height: i32) -> anyhow::Result<(AgentPhone, Inbox)> {
    // SAFETY: eventfd takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("eventfd for adbd requests");
    }
    // SAFETY: a fresh fd we own.
    let wake = unsafe { OwnedFd::from_raw_fd(fd) };
    let (tx, rx) = mpsc::channel();
    let phone = AgentPhone {
        requests: Mutex::new(tx),
        wake: wake.try_clone()?,
        size: (width, height),
    };
    Ok((phone, Inbox { requests: rx, wake }))
}

impl AgentPhone {
    fn post(&self, request: Request) -> anyhow::Result<()> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(request)
            .map_err(|_| anyhow::anyhow!("the phone's main loop has stopped"))?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        Ok(())
    }
}

impl Phone for AgentPhone {
    fn screencap(&self) -> anyhow::Result<Vec<u8>> {
        let (tx, rx) = mpsc::channel();
        self.post(Request::Screencap(tx))?;
        rx.recv_timeout(Duration::from_secs(10))
            .context("the phone did not capture its screen within 10 s")?
    }

    fn inject(&self, inputs: Vec<Input>) -> anyhow::Result<()> {
        self.post(Request::Inject(inputs))
    }

    fn screen_size(&self) -> (i32, i32) {
        self.size
    }

    fn reboot(&self) -> anyhow::Result<()> {
        tracing::info!("adb reboot: restarting the phone");
        // SAFETY: sync and reboot take no pointers; reboot returns only on failure.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_AUTOBOOT);
        }
        Err(std::io::Error::last_os_error()).context("reboot")
    }
}

impl Inbox {
    /// The fd to poll for requests.
    pub fn fd(&self) -> i32 {
        self.wake.as_raw_fd()
    }

    /// Clears the wakeup and returns the pending requests.
    pub fn drain(&self) -> Vec<Request> {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        self.requests.try_iter().collect()
    }
}
