//! PCI bus 0: type-1 configuration access through ports 0xCF8/0xCFC, a host bridge at 00:00.0,
//! BAR placement in the 32-bit MMIO hole, BAR regions on the MMIO bus, virtio notify addresses
//! as KVM ioeventfds, and MSI-X through KVM GSI routes + irqfds ([`msi`]). Devices only see
//! [`PciDevice`]; KVM stays on this side.

pub mod host_bridge;
pub mod msi;
pub mod root;

pub use msi::{GsiRoutes, KvmMsiSink};
pub use root::{PciRoot, SlotState, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};

/// Fixed slots, as listed in vmm/API.md.
pub mod slots {
    /// virtio-console.
    pub const CONSOLE: u8 = 1;
    /// virtio-gpu.
    pub const GPU: u8 = 2;
    /// virtio-input touchscreen.
    pub const TOUCH: u8 = 3;
    /// virtio-input keyboard.
    pub const KEYBOARD: u8 = 4;
    /// virtio-rng.
    pub const RNG: u8 = 5;
    /// virtio-vsock.
    pub const VSOCK: u8 = 6;
    /// virtio-balloon.
    pub const BALLOON: u8 = 7;
    /// virtio-net.
    pub const NET: u8 = 8;
    /// First virtio-blk slot (one per --disk).
    pub const FIRST_BLOCK: u8 = 0x10;
}
