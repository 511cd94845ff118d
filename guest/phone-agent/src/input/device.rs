//! Finding and reading the guest's evdev devices (/dev/input/event*): each is classified with
//! EVIOCGNAME/EVIOCGBIT as a touchscreen, a key device or the ACPI power button, switched to
//! CLOCK_MONOTONIC timestamps, and read non-blocking from the agent's poll loop.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::evdev::{
    self, Axis, Decoder, Input, TouchProtocol, ABS_MT_POSITION_X, ABS_MT_POSITION_Y, ABS_X, ABS_Y,
    EVENT_SIZE,
};

/// Most event devices opened (a guest has a touchscreen and a keyboard; more is odd).
const MAX_DEVICES: usize = 8;
/// Events read per read() call.
const READ_EVENTS: usize = 64;

const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((b'E' as u64) << 8) | nr
}
const IOC_READ: u64 = 2;
const IOC_WRITE: u64 = 1;
const fn eviocgname(len: u64) -> u64 {
    ioc(IOC_READ, 0x06, len)
}
const fn eviocgbit(ev: u64, len: u64) -> u64 {
    ioc(IOC_READ, 0x20 + ev, len)
}
const fn eviocgabs(abs: u64) -> u64 {
    ioc(
        IOC_READ,
        0x40 + abs,
        std::mem::size_of::<InputAbsinfo>() as u64,
    )
}
const EVIOCSCLOCKID: u64 = ioc(IOC_WRITE, 0xa0, 4);

#[repr(C)]
#[derive(Default)]
struct InputAbsinfo {
    value: i32,
    minimum: i32,
    maximum: i32,
    fuzz: i32,
    flat: i32,
    resolution: i32,
}

/// Name the kernel's ACPI `button` driver gives the power button's input device (both the
/// PNP0C0C device our VMM's GED notifies and the fixed-feature LNXPWRBN one).
pub const ACPI_POWER_BUTTON_NAME: &str = "Power Button";

/// What a device is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Touchscreen,
    /// The phone keys (virtio keyboard): POWER there toggles the screen, like a phone's side key.
    Keys,
    /// The ACPI power button: the host asks the phone to shut down (VMM `PUT /shutdown`).
    PowerButton,
}

/// Classifies a device from its name and its EV_ABS / EV_KEY capability bitmaps; None for
/// devices the phone does not use.
pub fn classify(name: &str, abs: &[u8], keys: &[u8]) -> Option<Kind> {
    if test_bit(abs, ABS_MT_POSITION_X) || test_bit(abs, ABS_X) {
        Some(Kind::Touchscreen)
    } else if name == ACPI_POWER_BUTTON_NAME && test_bit(keys, evdev::KEY_POWER) {
        Some(Kind::PowerButton)
    } else if (0..768u16).any(|code| test_bit(keys, code) && evdev::Key::from_code(code).is_some())
    {
        Some(Kind::Keys)
    } else {
        None
    }
}

/// One opened event device with its decoder.
pub struct Device {
    file: File,
    pub name: String,
    pub kind: Kind,
    decoder: Decoder,
}

fn test_bit(bits: &[u8], bit: u16) -> bool {
    bits.get(bit as usize / 8)
        .is_some_and(|b| b & (1 << (bit % 8)) != 0)
}

impl Device {
    /// Opens `path`; returns None for devices that are neither touchscreens nor phone keys.
    pub fn open(path: &str, screen: (i32, i32)) -> std::io::Result<Option<Device>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let fd = file.as_raw_fd();
        let mut name = [0u8; 128];
        // SAFETY: the kernel writes at most name.len() bytes into the buffer.
        unsafe { libc::ioctl(fd, eviocgname(name.len() as u64) as _, name.as_mut_ptr()) };
        let name = String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(0)])
            .into_owned();
        let abs = bits(fd, evdev::EV_ABS, 8);
        let keys = bits(fd, evdev::EV_KEY, 96);
        let Some(kind) = classify(&name, &abs, &keys) else {
            return Ok(None);
        };
        let monotonic: libc::c_int = libc::CLOCK_MONOTONIC;
        // SAFETY: EVIOCSCLOCKID reads one int from the pointer.
        if unsafe { libc::ioctl(fd, EVIOCSCLOCKID as _, &monotonic) } != 0 {
            tracing::warn!(
                "{path}: cannot switch event clock to monotonic; t_us uses CLOCK_REALTIME"
            );
        }
        // Key-only devices get the multitouch decoder, which never sends them touches.
        let single = kind == Kind::Touchscreen && !test_bit(&abs, ABS_MT_POSITION_X);
        let (protocol, xc, yc) = if single {
            (TouchProtocol::SingleTouch, ABS_X, ABS_Y)
        } else {
            (
                TouchProtocol::MultitouchB,
                ABS_MT_POSITION_X,
                ABS_MT_POSITION_Y,
            )
        };
        let (x, y) = (axis(fd, xc, screen.0), axis(fd, yc, screen.1));
        match kind {
            Kind::Touchscreen => {
                tracing::info!("input {path}: {name:?} touchscreen, {protocol:?}, x {x:?}, y {y:?}")
            }
            Kind::Keys => tracing::info!("input {path}: {name:?} keys"),
            Kind::PowerButton => tracing::info!("input {path}: {name:?} ACPI power button"),
        }
        Ok(Some(Device {
            file,
            name,
            kind,
            decoder: Decoder::new(protocol, x, y),
        }))
    }

    /// The fd to poll.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Reads what is pending and returns decoded inputs with their frame timestamps (µs).
    /// Returns Err when the device went away.
    pub fn read_inputs(&mut self) -> std::io::Result<Vec<(u64, Input)>> {
        let mut buf = [0u8; EVENT_SIZE * READ_EVENTS];
        let mut out = Vec::new();
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    for ev in evdev::parse_events(&buf[..n]) {
                        out.extend(self.decoder.feed(ev).into_iter().map(|i| (ev.time_us, i)));
                    }
                    if n < buf.len() {
                        return Ok(out);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The event-type bitmap of `ev` (`len` bytes).
fn bits(fd: RawFd, ev: u16, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // SAFETY: the kernel writes at most `len` bytes into the buffer.
    unsafe { libc::ioctl(fd, eviocgbit(ev as u64, len as u64) as _, v.as_mut_ptr()) };
    v
}

/// The device's range for `code`, mapped to `size` screen pixels (identity if unknown).
fn axis(fd: RawFd, code: u16, size: i32) -> Axis {
    let mut info = InputAbsinfo::default();
    // SAFETY: EVIOCGABS writes one input_absinfo into `info`.
    let rc = unsafe { libc::ioctl(fd, eviocgabs(code as u64) as _, &mut info) };
    if rc == 0 && info.maximum > info.minimum {
        Axis {
            min: info.minimum,
            max: info.maximum,
            size,
        }
    } else {
        Axis::identity(size)
    }
}

/// Paths of /dev/input/event* in numeric order.
pub fn event_paths() -> Vec<String> {
    let mut paths: Vec<(u32, String)> = std::fs::read_dir("/dev/input")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("event")?.parse().ok()?;
            Some((n, format!("/dev/input/{name}")))
        })
        .collect();
    paths.sort();
    paths.into_iter().map(|(_, p)| p).collect()
}

/// Opens every touchscreen and key device present.
pub fn open_all(screen: (i32, i32)) -> Vec<Device> {
    event_paths()
        .iter()
        .filter_map(|p| match Device::open(p, screen) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("input {p}: {e}");
                None
            }
        })
        .take(MAX_DEVICES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(bits: &[u16]) -> Vec<u8> {
        let mut v = vec![0u8; 96];
        for &b in bits {
            v[b as usize / 8] |= 1 << (b % 8);
        }
        v
    }

    #[test]
    fn classifies_touchscreens_keys_and_the_acpi_power_button() {
        let none = bitmap(&[]);
        let touch = bitmap(&[ABS_MT_POSITION_X, ABS_MT_POSITION_Y]);
        let power = bitmap(&[evdev::KEY_POWER]);
        let phone_keys = bitmap(&[evdev::KEY_BACK, evdev::KEY_POWER]);
        assert_eq!(
            classify("virtio-touchscreen-0", &touch, &none),
            Some(Kind::Touchscreen)
        );
        assert_eq!(
            classify("Power Button", &none, &power),
            Some(Kind::PowerButton)
        );
        // POWER on the phone's own keyboard toggles the screen; it is not a shutdown request.
        assert_eq!(
            classify("virtio-keyboard-0", &none, &phone_keys),
            Some(Kind::Keys)
        );
        assert_eq!(
            classify("virtio-keyboard-0", &none, &power),
            Some(Kind::Keys)
        );
        // A device named like the button but without KEY_POWER is not trusted as one.
        assert_eq!(
            classify("Power Button", &none, &bitmap(&[evdev::KEY_BACK])),
            Some(Kind::Keys)
        );
        assert_eq!(classify("Sleep Button", &none, &bitmap(&[142])), None);
        assert_eq!(classify("Power Button", &none, &none), None);
    }
}
