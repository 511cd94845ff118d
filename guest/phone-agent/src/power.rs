//! Shutting the phone down when the host presses the ACPI power button (the VMM's
//! `PUT /shutdown` raises it through the GED): flush the filesystems, then ask the kernel to
//! power off, which enters ACPI S5 and makes the VMM exit 0 instead of forcing the stop.

use crate::input::evdev::{Input, Key};

/// True when a batch read from the ACPI power button holds a press (the button driver sends
/// press and release together; acting on the press alone is enough).
pub fn pressed(inputs: &[(u64, Input)]) -> bool {
    inputs.iter().any(|(_, input)| {
        matches!(
            input,
            Input::Key {
                key: Key::Power,
                down: true
            }
        )
    })
}

/// Syncs and powers the machine off. Returns only when the kernel refused (the error says
/// why, e.g. EPERM without CAP_SYS_BOOT).
pub fn power_off() -> std::io::Error {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // SAFETY: reboot with RB_POWER_OFF takes no pointers; on success it does not return.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    std::io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::evdev::TouchAction;

    #[test]
    fn only_a_power_press_counts() {
        let key = |key, down| (1, Input::Key { key, down });
        assert!(pressed(&[key(Key::Power, true), key(Key::Power, false)]));
        assert!(!pressed(&[key(Key::Power, false)]));
        assert!(!pressed(&[key(Key::Home, true)]));
        let touch = Input::Touch {
            slot: 0,
            action: TouchAction::Down,
            x: 1,
            y: 2,
        };
        assert!(!pressed(&[(1, touch)]));
        assert!(!pressed(&[]));
    }
}
