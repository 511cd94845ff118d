//! The ACPI power-management block declared in the FADT/DSDT: sleep control (S5 = power off),
//! sleep status, reset register and the GED pending-event register.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{
    GED_EVENT_PORT, PM_PORTS, RESET_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT,
};
use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

const SLP_EN: u8 = 1 << 5;

/// The power-management registers plus the GED interrupt line.
pub struct PowerManagement {
    exit: Arc<ExitSignal>,
    ged_irq: EventFd,
    pending: u8,
}

fn offset_of(port: u16) -> u64 {
    u64::from(port - PM_PORTS.0)
}

impl PowerManagement {
    /// Registers reporting to `exit`; GED events are signalled on `ged_irq`.
    pub fn new(exit: Arc<ExitSignal>, ged_irq: EventFd) -> Self {
        Self {
            exit,
            ged_irq,
            pending: 0,
        }
    }

    /// GED events raised and not yet read by the guest (snapshot state).
    pub fn pending(&self) -> u8 {
        self.pending
    }

    /// Restore the GED events a snapshot recorded as pending.
    pub fn set_pending(&mut self, pending: u8) {
        self.pending = pending;
    }

    /// Latch GED `event` bits and interrupt the guest (e.g. the power button).
    pub fn raise_ged(&mut self, event: u8) -> std::io::Result<()> {
        self.pending |= event;
        self.ged_irq.write(1)
    }
}

impl BusDevice for PowerManagement {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == offset_of(GED_EVENT_PORT) && data.len() == 1 {
            data[0] = std::mem::take(&mut self.pending);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if offset == offset_of(SLEEP_CONTROL_PORT) && value & SLP_EN != 0 {
            let sleep_type = (value >> 2) & 0x7;
            if sleep_type == S5_SLEEP_TYPE {
                self.exit.request(GuestExit::PowerOff);
            } else {
                cloudphone_virtio::guest_warn!(
                    sleep_type,
                    "guest asked for an unsupported sleep state; ignored"
                );
            }
        } else if offset == offset_of(RESET_PORT) && value == RESET_VALUE {
            self.exit.request(GuestExit::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (PowerManagement, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::default());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (PowerManagement::new(exit.clone(), irq), exit)
    }

    #[test]
    fn s5_write_powers_off() {
        let (mut pm, exit) = dev();
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3: ignored
        pm.write(0, &[5 << 2]); // no SLP_EN
        assert_eq!(exit.get(), None);
        pm.write(0, &[(5 << 2) | SLP_EN]);
        assert_eq!(exit.get(), Some(GuestExit::PowerOff));
    }

    #[test]
    fn reset_register_reboots() {
        let (mut pm, exit) = dev();
        pm.write(offset_of(RESET_PORT), &[0]);
        assert_eq!(exit.get(), None);
        pm.write(offset_of(RESET_PORT), &[RESET_VALUE]);
        assert_eq!(exit.get(), Some(GuestExit::Reboot));
    }

    #[test]
    fn ged_pending_is_read_once() {
        let (mut pm, _) = dev();
        pm.raise_ged(1).unwrap();
        assert_eq!(pm.ged_irq.read().unwrap(), 1);
        let mut b = [0u8];
        pm.read(offset_of(GED_EVENT_PORT), &mut b);
        assert_eq!(b[0], 1);
        pm.read(offset_of(GED_EVENT_PORT), &mut b);
        assert_eq!(b[0], 0);
    }
}
