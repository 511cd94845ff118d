//! Test-only fault injection: a port-I/O device that panics when the guest writes to it, the
//! stand-in for a device model bug a guest can reach. Compiled only into debug builds and
//! placed only when `CLOUDPHONE_VMM_TEST_FAULT_PORT` names a port (vmm/API.md), so the tier-2
//! test can prove a panicking handler stops the VM with exit code 36; release builds have
//! neither the device nor the variable.

use crate::bus::BusDevice;

/// The environment variable holding the port (decimal or `0x` hex) to place the device at.
pub const FAULT_PORT_VAR: &str = "CLOUDPHONE_VMM_TEST_FAULT_PORT";

/// The line logged just before the panic, so a test can time the VMM's reaction from it.
pub const FAULT_MARKER: &str = "test fault device: panicking on a guest write";

/// Panics on every guest write; reads return all-ones like an empty port.
pub struct FaultDevice;

impl BusDevice for FaultDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, offset: u64, _data: &[u8]) {
        tracing::error!(offset, "{FAULT_MARKER}");
        panic!("{FAULT_MARKER} (offset {offset})");
    }
}

/// The port `CLOUDPHONE_VMM_TEST_FAULT_PORT` asks for, if any; a value that is not a port is
/// an error naming the variable.
pub fn requested_port() -> anyhow::Result<Option<u16>> {
    let Ok(value) = std::env::var(FAULT_PORT_VAR) else {
        return Ok(None);
    };
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{FAULT_PORT_VAR}={value:?} is not a port number: {e}"))
}
