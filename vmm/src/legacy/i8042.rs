//! Just enough of the i8042 keyboard controller for the "pulse reset line" command that
//! Linux uses as a reboot fallback.

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};

/// Base port (data at +0, command/status at +4).
pub const I8042_PORT: u16 = 0x60;
/// Ports covered (0x60..=0x64).
pub const I8042_LEN: u16 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller; asks the VM to reboot on command 0xFE.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller reporting resets to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data reads as 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(GuestExit::Reboot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reboot_only() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(4, &[0x20]);
        assert_eq!(exit.get(), None);
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), Some(GuestExit::Reboot));
    }
}
