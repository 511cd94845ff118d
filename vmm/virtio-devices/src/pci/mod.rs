//! Generic PCI function pieces: type-0 configuration space with BARs and capabilities
//! ([`PciConfiguration`]), MSI-X ([`MsixTable`]) and the [`PciDevice`] trait through which the
//! VMM's PCI bus reaches a function.

mod config;
mod msix;

pub use config::{
    ConfigError, PciConfiguration, PciHeader, CONFIG_DWORDS, EXTENDED_CONFIG_DWORDS, NUM_BARS,
};
pub use msix::{
    Delivery, MsiSink, MsixEntry, MsixError, MsixMessage, MsixState, MsixTable, MAX_MSIX_VECTORS,
    MSIX_CAP_ID, MSIX_ENTRY_SIZE,
};

/// The address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O port space.
    Io,
    /// 32-bit memory space (below 4 GiB).
    Memory32,
    /// 64-bit memory space (takes two BAR registers).
    Memory64,
}

/// One implemented BAR, as the VMM needs it to map MMIO and allocate addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBar {
    /// BAR index (0..=5); a 64-bit BAR also uses `index + 1`.
    pub index: usize,
    /// Address space kind.
    pub kind: BarKind,
    /// Size in bytes (power of two).
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Current base address (0 until placed).
    pub addr: u64,
}

/// The guest moved a BAR: the VMM must move its MMIO range and any ioeventfds in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub bar: usize,
    /// Previous base address.
    pub old: u64,
    /// New base address.
    pub new: u64,
    /// BAR size.
    pub size: u64,
}

/// A PCI function as the VMM's PCI bus sees it (config space via 0xCF8/0xCFC or ECAM, BAR
/// accesses routed by the MMIO bus). Register and BAR accesses come from vCPU threads, so
/// implementations never block on device I/O.
pub trait PciDevice: Send {
    /// Read configuration dword `reg` (byte offset `reg * 4`).
    fn config_read(&self, reg: usize) -> u32;
    /// Write `data` (1, 2 or 4 bytes) at byte `offset` inside configuration dword `reg`.
    /// Returns the BAR move this write completed, so the VMM can remap it.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove>;
    /// The implemented BARs with their current addresses.
    fn bars(&self) -> Vec<PciBar>;
    /// Place BAR `index` at `addr` when the VMM allocates the PCI hole at boot.
    fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), ConfigError>;
    /// Guest read of `data.len()` bytes at `offset` inside BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset` inside BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The function's snapshot state, so the VMM can save every slot without knowing what
    /// sits in it; `None` for functions with nothing the guest can change (host bridge).
    fn virtio_state(&self) -> Result<Option<crate::transport::TransportState>, crate::StateError> {
        Ok(None)
    }
    /// Hold the function's device still while a snapshot is taken (its worker parked between
    /// events); false if it did not settle in time. Nothing to do for functions without one.
    fn quiesce(&self) -> bool {
        true
    }
    /// Let the device run again after [`quiesce`](Self::quiesce).
    fn unquiesce(&self) {}
    /// Start a function restored from a snapshot once the VM can take its interrupts (see
    /// `VirtioPciDevice::resume`); nothing to do for functions without a device behind them.
    fn resume(&mut self) -> Result<(), crate::transport::RestoreError> {
        Ok(())
    }
}
