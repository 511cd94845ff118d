//! Taking the screen from the kernel's text console: with fbcon bound to virtio-gpu's fbdev
//! emulation, the console keeps blinking its cursor (a kernel work item 5 times a second)
//! underneath the agent's scanout. Switching the active VT to graphics mode, as display
//! servers do, stops that and every other console drawing, so an idle phone stays idle.

use std::os::fd::AsRawFd;

/// The active virtual terminal.
const ACTIVE_VT: &str = "/dev/tty0";
/// `KDSETMODE` and its `KD_GRAPHICS` argument (linux/kd.h).
const KDSETMODE: libc::c_ulong = 0x4B3A;
const KD_GRAPHICS: libc::c_ulong = 0x01;

/// Puts the active VT into graphics mode. A kernel without VTs has no console to stop, so a
/// missing /dev/tty0 is not an error.
pub fn stop_text_console() -> std::io::Result<()> {
    let vt = match std::fs::OpenOptions::new().write(true).open(ACTIVE_VT) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // SAFETY: KDSETMODE takes its mode by value; no memory is passed.
    if unsafe { libc::ioctl(vt.as_raw_fd(), KDSETMODE as _, KD_GRAPHICS) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
