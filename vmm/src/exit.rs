//! Why the guest stopped, as seen by the process: the exit codes fixed in vmm/API.md, and the
//! one-shot signal devices and vCPUs use to report it.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5 / power off.
    PowerOff,
    /// Reset via ACPI reset register or the i8042.
    Reboot,
    /// Triple fault, failed entry or internal KVM error.
    Crash,
    /// A shutdown request was not honoured in time; the VMM forced it.
    ShutdownHung,
    /// The VMM itself failed (message logged).
    VmmError,
    /// A device model panicked while a vCPU thread ran it (port I/O or MMIO handler, PCI
    /// config write, device activation): the VM stops instead of leaving a dead vCPU behind.
    DevicePanic,
}

impl GuestExit {
    /// The process exit code for this outcome (vmm/API.md).
    pub fn code(self) -> i32 {
        match self {
            GuestExit::PowerOff => 0,
            GuestExit::Reboot => 32,
            GuestExit::Crash => 33,
            GuestExit::ShutdownHung => 34,
            GuestExit::VmmError => 1,
            GuestExit::DevicePanic => 36,
        }
    }
}

/// Exit code for bad configuration or input files.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for missing/unusable KVM.
pub const EXIT_KVM: i32 = 3;
/// Exit code when a `--disk` image is locked by another VMM (or any other process): the
/// agent and tests tell "two VMMs given one overlay" apart from a bad option.
pub const EXIT_DISK_IN_USE: i32 = 37;

/// Exit code for a VMM-side failure, by the kind of error in its chain (vmm/API.md).
pub fn failure_code(e: &anyhow::Error) -> i32 {
    let has = |is: fn(&(dyn std::error::Error + 'static)) -> bool| e.chain().any(is);
    if has(|c| c.is::<cloudphone_block::lock::ImageInUse>()) {
        EXIT_DISK_IN_USE
    } else if has(|c| c.is::<crate::jail::JailError>()) {
        crate::jail::EXIT_JAIL
    } else if has(|c| c.is::<crate::kvm::KvmError>()) {
        EXIT_KVM
    } else if has(|c| c.is::<crate::boot::BootError>() || c.is::<crate::vm::DeviceSetupError>()) {
        EXIT_CONFIG
    } else {
        GuestExit::VmmError.code()
    }
}

/// First-writer-wins slot for the guest's exit reason, with a condition variable to wait on.
#[derive(Default)]
pub struct ExitSignal {
    reason: Mutex<Option<GuestExit>>,
    changed: Condvar,
}

impl ExitSignal {
    /// Record `reason` unless another one was recorded first.
    pub fn request(&self, reason: GuestExit) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::info!(?reason, "guest exit requested");
            *slot = Some(reason);
            self.changed.notify_all();
        }
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<GuestExit> {
        *self.reason.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait up to `timeout` (forever with `None`) for a reason.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<GuestExit> {
        let guard = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        let guard = match timeout {
            None => self
                .changed
                .wait_while(guard, |r| r.is_none())
                .unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.changed
                    .wait_timeout_while(guard, t, |r| r.is_none())
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
        *guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes_match_contract() {
        let s = ExitSignal::default();
        assert_eq!(s.wait(Some(Duration::from_millis(1))), None);
        s.request(GuestExit::Reboot);
        s.request(GuestExit::PowerOff);
        assert_eq!(s.wait(None), Some(GuestExit::Reboot));
        let codes: Vec<i32> = [
            GuestExit::PowerOff,
            GuestExit::Reboot,
            GuestExit::Crash,
            GuestExit::ShutdownHung,
            GuestExit::VmmError,
            GuestExit::DevicePanic,
        ]
        .iter()
        .map(|e| e.code())
        .collect();
        assert_eq!(codes, vec![0, 32, 33, 34, 1, 36]);
    }
}
