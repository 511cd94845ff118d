//! The host bridge at 00:00.0: Linux's type-1 probe looks for a host-bridge-class device on
//! bus 0 before it trusts the 0xCF8 mechanism.

use cloudphone_virtio::pci::{BarMove, ConfigError, PciBar, PciDevice};

const VENDOR_REDHAT: u32 = 0x1b36;
const DEVICE_HOST_BRIDGE: u32 = 0x0008;
const CLASS_HOST_BRIDGE: u32 = 0x0600_0000;

/// A config-space-only function with no BARs.
#[derive(Default)]
pub struct HostBridge;

impl PciDevice for HostBridge {
    fn config_read(&self, reg: usize) -> u32 {
        match reg {
            0 => (DEVICE_HOST_BRIDGE << 16) | VENDOR_REDHAT,
            2 => CLASS_HOST_BRIDGE,
            _ => 0,
        }
    }
    fn config_write(&mut self, _reg: usize, _offset: u64, _data: &[u8]) -> Option<BarMove> {
        None
    }
    fn bars(&self) -> Vec<PciBar> {
        Vec::new()
    }
    fn set_bar_address(&mut self, _index: usize, _addr: u64) -> Result<(), ConfigError> {
        Ok(())
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}
