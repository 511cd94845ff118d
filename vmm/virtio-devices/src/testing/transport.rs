//! A virtio-drivers [`Transport`] that plays the guest driver against a real
//! [`VirtioPciDevice`]: it discovers the layout from PCI config space (capability list, MSI-X
//! capability) like Linux does, and every register access goes through `bar_read` /
//! `bar_write`, so tier-1 tests exercise the production transport end to end.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::CountingMsiSink;
use crate::pci::{PciDevice, MSIX_CAP_ID};
use crate::transport::VirtioPciDevice;

/// The MSI-X vector the test driver assigns to config changes; queue `q` gets `q + 1`.
pub const CONFIG_VECTOR: u16 = 0;
/// x86 MSI address the test driver programs (LAPIC base, destination 0).
pub const TEST_MSI_ADDR: u64 = 0xfee0_0000;

/// Why the driver side could not find the device's virtio structures.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Vendor/device ID are not a modern virtio device.
    #[error("PCI ID {0:#010x} is not a modern virtio device (vendor 0x1af4, device 0x1040+)")]
    NotVirtio(u32),
    /// A required virtio capability is missing or malformed.
    #[error("virtio PCI capability {0} missing or malformed in config space")]
    Capability(&'static str),
}

#[derive(Clone, Copy, Debug, Default)]
struct Region {
    bar: usize,
    offset: u64,
    len: u64,
}

/// Driver-side view of one virtio-pci function (cheap to clone; clones share the device).
#[derive(Clone)]
pub struct TestTransport {
    pci: Arc<Mutex<VirtioPciDevice>>,
    sink: Arc<CountingMsiSink>,
    device_type: DeviceType,
    common: Region,
    notify: Region,
    notify_multiplier: u32,
    isr: Region,
    device_cfg: Region,
    msix: bool,
}

fn cfg_bytes(pci: &VirtioPciDevice, offset: usize, len: usize) -> u64 {
    (0..len).fold(0u64, |acc, i| {
        let at = offset + i;
        let byte = (pci.config_read(at / 4) >> ((at % 4) * 8)) & 0xff;
        acc | u64::from(byte) << (8 * i)
    })
}

impl TestTransport {
    /// Discover the device like a guest driver: IDs, capability list, MSI-X. With `msix`,
    /// MSI-X is enabled and every vector programmed and unmasked (the Linux setup);
    /// without, interrupts are reported through the ISR register only.
    pub fn new(
        pci: Arc<Mutex<VirtioPciDevice>>,
        sink: Arc<CountingMsiSink>,
        msix: bool,
    ) -> Result<Self, DiscoveryError> {
        let mut t = Self {
            pci,
            sink,
            device_type: DeviceType::Network,
            common: Region::default(),
            notify: Region::default(),
            notify_multiplier: 0,
            isr: Region::default(),
            device_cfg: Region::default(),
            msix,
        };
        let mut guard = t.lock();
        let ids = guard.config_read(0);
        let device_id = (ids >> 16) as u16;
        if ids & 0xffff != 0x1af4 || device_id < 0x1040 {
            return Err(DiscoveryError::NotVirtio(ids));
        }
        let device_type = DeviceType::try_from(u32::from(device_id - 0x1040))
            .map_err(|_| DiscoveryError::NotVirtio(ids))?;
        // Enable memory decoding and bus mastering, as the guest PCI core does.
        guard.config_write(1, 0, &[0x06, 0x00]);
        let (mut common, mut notify, mut isr, mut device_cfg) = (None, None, None, None);
        let mut multiplier = 0;
        let mut msix_cap = None;
        let mut ptr = cfg_bytes(&guard, 0x34, 1) as usize & !3;
        // A well-formed list has at most 48 entries; the bound stops a looping list.
        for _ in 0..48 {
            if ptr == 0 {
                break;
            }
            let id = cfg_bytes(&guard, ptr, 1) as u8;
            if id == 0x09 {
                let region = Region {
                    bar: cfg_bytes(&guard, ptr + 4, 1) as usize,
                    offset: cfg_bytes(&guard, ptr + 8, 4),
                    len: cfg_bytes(&guard, ptr + 12, 4),
                };
                match cfg_bytes(&guard, ptr + 3, 1) {
                    1 => common = Some(region),
                    2 => {
                        notify = Some(region);
                        multiplier = cfg_bytes(&guard, ptr + 16, 4) as u32;
                    }
                    3 => isr = Some(region),
                    4 => device_cfg = Some(region),
                    _ => {}
                }
            } else if id == MSIX_CAP_ID {
                msix_cap = Some(ptr);
            }
            ptr = cfg_bytes(&guard, ptr + 1, 1) as usize & !3;
        }
        let msix_cap = msix_cap.ok_or(DiscoveryError::Capability("MSI-X"))?;
        if msix {
            enable_msix(&mut guard, msix_cap);
        }
        drop(guard);
        t.device_type = device_type;
        t.common = common.ok_or(DiscoveryError::Capability("common config"))?;
        t.notify = notify.ok_or(DiscoveryError::Capability("notify"))?;
        t.isr = isr.ok_or(DiscoveryError::Capability("ISR"))?;
        t.device_cfg = device_cfg.ok_or(DiscoveryError::Capability("device config"))?;
        t.notify_multiplier = multiplier;
        Ok(t)
    }

    fn lock(&self) -> MutexGuard<'_, VirtioPciDevice> {
        self.pci.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self, region: Region, offset: u64, len: usize) -> u64 {
        let mut buf = [0u8; 8];
        self.lock()
            .bar_read(region.bar, region.offset + offset, &mut buf[..len]);
        u64::from_le_bytes(buf)
    }

    fn write(&self, region: Region, offset: u64, len: usize, value: u64) {
        self.lock().bar_write(
            region.bar,
            region.offset + offset,
            &value.to_le_bytes()[..len],
        );
    }

    /// 64-bit registers are written as two dwords, as Linux does.
    fn write64(&self, offset: u64, value: u64) {
        self.write(self.common, offset, 4, value & 0xffff_ffff);
        self.write(self.common, offset + 4, 4, value >> 32);
    }

    /// Split a config access into naturally aligned 4/2/1-byte accesses.
    fn config_chunks(offset: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
        let mut at = offset;
        let end = offset + len;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let width = [4, 2, 1]
                .into_iter()
                .find(|w| at % w == 0 && at + w <= end)
                .unwrap_or(1);
            let chunk = (at, width);
            at += width;
            Some(chunk)
        })
    }

    fn check_config_range(&self, offset: usize, len: usize) -> Result<(), Error> {
        if (offset + len) as u64 > self.device_cfg.len {
            return Err(Error::ConfigSpaceTooSmall);
        }
        Ok(())
    }
}

/// Set MSI-X enable, then program vector `v` with data `0x30 + v` and unmask it.
fn enable_msix(pci: &mut VirtioPciDevice, cap: usize) {
    let control = cfg_bytes(pci, cap + 2, 2) as u16;
    let table = cfg_bytes(pci, cap + 4, 4) as u32;
    let vectors = u64::from(control & 0x7ff) + 1;
    pci.config_write(cap / 4, 2, &(control | 0x8000).to_le_bytes());
    let bar = (table & 7) as usize;
    let base = u64::from(table & !7);
    for v in 0..vectors {
        let entry = base + v * 16;
        pci.bar_write(bar, entry, &(TEST_MSI_ADDR as u32).to_le_bytes());
        pci.bar_write(
            bar,
            entry + 4,
            &((TEST_MSI_ADDR >> 32) as u32).to_le_bytes(),
        );
        pci.bar_write(bar, entry + 8, &(0x30 + v as u32).to_le_bytes());
        pci.bar_write(bar, entry + 12, &0u32.to_le_bytes());
    }
}

impl Transport for TestTransport {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.write(self.common, 0x00, 4, 0);
        let low = self.read(self.common, 0x04, 4);
        self.write(self.common, 0x00, 4, 1);
        low | self.read(self.common, 0x04, 4) << 32
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.write(self.common, 0x08, 4, 0);
        self.write(self.common, 0x0c, 4, driver_features & 0xffff_ffff);
        self.write(self.common, 0x08, 4, 1);
        self.write(self.common, 0x0c, 4, driver_features >> 32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write(self.common, 0x16, 2, queue.into());
        self.read(self.common, 0x18, 2) as u32
    }

    fn notify(&mut self, queue: u16) {
        self.write(self.common, 0x16, 2, queue.into());
        let off = self.read(self.common, 0x1e, 2);
        self.write(
            self.notify,
            off * u64::from(self.notify_multiplier),
            2,
            queue.into(),
        );
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read(self.common, 0x14, 1) as u32)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write(self.common, 0x14, 1, status.bits().into());
        if self.msix && status.contains(DeviceStatus::DRIVER) {
            self.write(self.common, 0x10, 2, CONFIG_VECTOR.into());
        }
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.write(self.common, 0x16, 2, queue.into());
        self.write(self.common, 0x18, 2, size.into());
        self.write64(0x20, descriptors);
        self.write64(0x28, driver_area);
        self.write64(0x30, device_area);
        if self.msix {
            self.write(self.common, 0x1a, 2, u64::from(queue) + 1);
        }
        self.write(self.common, 0x1c, 2, 1);
    }

    fn queue_unset(&mut self, _queue: u16) {
        // The modern PCI transport cannot disable a single queue; only a reset does.
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.write(self.common, 0x16, 2, queue.into());
        self.read(self.common, 0x1c, 2) == 1
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut bits = self.read(self.isr, 0, 1) as u32;
        for vector in self.sink.take_fired() {
            bits |= if vector == CONFIG_VECTOR { 2 } else { 1 };
        }
        InterruptStatus::from_bits_truncate(bits)
    }

    fn read_config_generation(&self) -> u32 {
        self.read(self.common, 0x15, 1) as u32
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let len = size_of::<T>();
        self.check_config_range(offset, len)?;
        let mut bytes = vec![0u8; len];
        for (at, width) in Self::config_chunks(offset, len) {
            let value = self.read(self.device_cfg, at as u64, width);
            let start = at - offset;
            bytes[start..start + width].copy_from_slice(&value.to_le_bytes()[..width]);
        }
        T::read_from_bytes(&bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), Error> {
        let bytes = value.as_bytes();
        self.check_config_range(offset, bytes.len())?;
        for (at, width) in Self::config_chunks(offset, bytes.len()) {
            let start = at - offset;
            let mut raw = [0u8; 8];
            raw[..width].copy_from_slice(&bytes[start..start + width]);
            self.write(self.device_cfg, at as u64, width, u64::from_le_bytes(raw));
        }
        Ok(())
    }
}
