//! The PCI root: configuration mechanism #1 on ports 0xCF8-0xCFF, slot table, BAR placement
//! and remapping (MMIO bus regions + ioeventfds follow the BAR).

use std::sync::{Arc, Mutex};

use cloudphone_virtio::pci::{BarKind, BarMove, PciDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::bus::BusDevice;
use crate::vcpu::VcpuContext;

/// CONFIG_ADDRESS port; CONFIG_DATA is at +4.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports covered (address + data).
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
const SLOTS: usize = 32;
const ENABLE: u32 = 1 << 31;

/// A PCI function shared between the root (config space) and its BAR regions (MMIO).
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

fn lock(d: &SharedPciDevice) -> std::sync::MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a device could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// Slot number invalid or taken.
    #[error("PCI slot {0} is out of range or already used")]
    Slot(u8),
    /// The MMIO hole is full.
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO window")]
    NoSpace {
        /// BAR size.
        size: u64,
    },
    /// Placing a BAR failed.
    #[error("placing BAR {bar} failed: {reason}")]
    Bar {
        /// BAR index.
        bar: usize,
        /// Why.
        reason: String,
    },
    /// KVM rejected an ioeventfd.
    #[error("KVM_IOEVENTFD at {addr:#x} failed: {source}")]
    IoEvent {
        /// Address.
        addr: u64,
        /// Error.
        source: kvm_ioctls::Error,
    },
    /// The MMIO bus refused the region.
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// Forwards MMIO accesses inside one BAR to the function.
struct BarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.device).bar_read(self.bar, offset, data);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.device).bar_write(self.bar, offset, data);
    }
}

/// Queue notification eventfds of one function: (BAR index, offset in the BAR, eventfd).
pub type NotifyFds = Vec<(usize, u64, EventFd)>;

struct Slot {
    device: SharedPciDevice,
    notify: NotifyFds,
}

/// Bus 0 with up to 32 single-function devices.
pub struct PciRoot {
    vm: Arc<VmFd>,
    ctx: Arc<VcpuContext>,
    slots: Vec<Option<Slot>>,
    address: u32,
    next_mmio: u64,
}

impl PciRoot {
    /// An empty bus whose BAR regions go on `ctx`'s MMIO bus.
    pub fn new(vm: Arc<VmFd>, ctx: Arc<VcpuContext>) -> Self {
        Self {
            vm,
            ctx,
            slots: (0..SLOTS).map(|_| None).collect(),
            address: 0,
            next_mmio: PCI_MMIO_START,
        }
    }

    /// The CONFIG_ADDRESS latch (snapshot state).
    pub fn config_address(&self) -> u32 {
        self.address
    }

    /// Restore the CONFIG_ADDRESS latch from a snapshot.
    pub fn set_config_address(&mut self, address: u32) {
        self.address = address & !0x3;
    }

    /// Slots that hold a device.
    pub fn occupied_slots(&self) -> Vec<u8> {
        (0..self.slots.len() as u8)
            .filter(|&s| self.slots[usize::from(s)].is_some())
            .collect()
    }

    fn allocate(&mut self, size: u64) -> Result<u64, PciError> {
        let size = size.max(0x1000);
        let base = self
            .next_mmio
            .checked_next_multiple_of(size)
            .ok_or(PciError::NoSpace { size })?;
        if base + size > PCI_MMIO_START + PCI_MMIO_SIZE {
            return Err(PciError::NoSpace { size });
        }
        self.next_mmio = base + size;
        Ok(base)
    }

    fn ioevent(&self, fd: &EventFd, addr: u64, on: bool) -> Result<(), PciError> {
        let a = IoEventAddress::Mmio(addr);
        let r = if on {
            self.vm.register_ioevent(fd, &a, NoDatamatch)
        } else {
            self.vm.unregister_ioevent(fd, &a, NoDatamatch)
        };
        r.map_err(|source| PciError::IoEvent { addr, source })
    }

    /// Attach `device` at `slot`: place its memory BARs in the MMIO hole, map them, and turn
    /// its queue notify addresses (`notify`) into ioeventfds.
    pub fn attach(
        &mut self,
        slot: u8,
        device: SharedPciDevice,
        notify: NotifyFds,
    ) -> Result<(), PciError> {
        if usize::from(slot) >= SLOTS || self.slots[usize::from(slot)].is_some() {
            return Err(PciError::Slot(slot));
        }
        let bars = lock(&device).bars();
        for bar in bars.iter().filter(|b| b.kind != BarKind::Io) {
            let addr = self.allocate(bar.size)?;
            lock(&device)
                .set_bar_address(bar.index, addr)
                .map_err(|e| PciError::Bar {
                    bar: bar.index,
                    reason: e.to_string(),
                })?;
            self.map_bar(&device, &notify, bar.index, addr, bar.size)?;
        }
        self.slots[usize::from(slot)] = Some(Slot { device, notify });
        Ok(())
    }

    fn map_bar(
        &self,
        device: &SharedPciDevice,
        notify: &NotifyFds,
        bar: usize,
        addr: u64,
        size: u64,
    ) -> Result<(), PciError> {
        let region = Arc::new(Mutex::new(BarRegion {
            device: device.clone(),
            bar,
        }));
        self.ctx
            .mmio
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region, addr, size)?;
        for (_, off, fd) in notify.iter().filter(|(b, _, _)| *b == bar) {
            self.ioevent(fd, addr + off, true)?;
        }
        Ok(())
    }

    /// The guest moved a BAR: unmap the old range and its ioeventfds, map the new one.
    fn move_bar(&self, slot: usize, mv: BarMove) {
        let Some(s) = &self.slots[slot] else { return };
        if mv.old != 0 {
            self.ctx
                .mmio
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(mv.old);
            for (_, off, fd) in s.notify.iter().filter(|(b, _, _)| *b == mv.bar) {
                if let Err(e) = self.ioevent(fd, mv.old + off, false) {
                    tracing::warn!(error = %e, "cannot remove an ioeventfd");
                }
            }
        }
        if mv.new == 0 {
            return;
        }
        if let Err(e) = self.map_bar(&s.device, &s.notify, mv.bar, mv.new, mv.size) {
            tracing::warn!(slot, bar = mv.bar, new = format_args!("{:#x}", mv.new), error = %e,
                "guest moved a BAR onto an unusable range; the BAR is unmapped");
        }
    }

    /// (slot, register) addressed by CONFIG_ADDRESS, if it names a present function on bus 0.
    fn target(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let slot = ((a >> 11) & 0x1f) as usize;
        let function = (a >> 8) & 0x7;
        let reg = ((a >> 2) & 0x3f) as usize;
        (a & ENABLE != 0 && bus == 0 && function == 0 && self.slots[slot].is_some())
            .then_some((slot, reg))
    }
}

fn splice(old: u32, offset: u64, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(dst) = bytes.get_mut(offset as usize + i) {
            *dst = *b;
        }
    }
    u32::from_le_bytes(bytes)
}

fn extract(value: u32, offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => extract(self.address, offset, data),
            _ => {
                let value = match self.target() {
                    Some((slot, reg)) => {
                        let s = self.slots[slot].as_ref().expect("target checked the slot");
                        lock(&s.device).config_read(reg)
                    }
                    None => u32::MAX,
                };
                extract(value, offset - 4, data);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0..=3 => self.address = splice(self.address, offset, data) & !0x3,
            _ => {
                let Some((slot, reg)) = self.target() else {
                    return;
                };
                let at = offset - 4;
                let mv = {
                    let s = self.slots[slot].as_ref().expect("target checked the slot");
                    // The device lock is released before the MMIO bus is touched (vCPUs doing
                    // MMIO hold the bus lock while they take device locks).
                    let mut dev = lock(&s.device);
                    dev.config_write(reg, at, data)
                };
                if let Some(mv) = mv {
                    self.move_bar(slot, mv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitSignal;
    use cloudphone_virtio::pci::{ConfigError, PciBar};

    type Log = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

    /// One 16 KiB memory BAR; writing dword 4 (BAR0) moves it.
    struct Fake {
        bar: PciBar,
        accesses: Log,
    }

    impl PciDevice for Fake {
        fn config_read(&self, reg: usize) -> u32 {
            match reg {
                0 => 0x1234_1af4,
                4 => self.bar.addr as u32,
                _ => 0,
            }
        }
        fn config_write(&mut self, reg: usize, _offset: u64, data: &[u8]) -> Option<BarMove> {
            (reg == 4 && data.len() == 4).then(|| {
                let new = u64::from(u32::from_le_bytes(data.try_into().unwrap()));
                let mv = BarMove {
                    bar: 0,
                    old: self.bar.addr,
                    new,
                    size: self.bar.size,
                };
                self.bar.addr = new;
                mv
            })
        }
        fn bars(&self) -> Vec<PciBar> {
            vec![self.bar]
        }
        fn set_bar_address(&mut self, _index: usize, addr: u64) -> Result<(), ConfigError> {
            self.bar.addr = addr;
            Ok(())
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            self.accesses.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    fn cfg_addr(slot: u32, reg: u32) -> [u8; 4] {
        (ENABLE | (slot << 11) | (reg << 2)).to_le_bytes()
    }

    #[test]
    fn config_space_bar_mapping_and_moves() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let ctx = Arc::new(VcpuContext::new(Arc::new(ExitSignal::default())));
        let mut root = PciRoot::new(vm, ctx.clone());
        root.attach(
            0,
            Arc::new(Mutex::new(super::super::host_bridge::HostBridge)),
            Vec::new(),
        )
        .unwrap();
        let accesses = Arc::new(Mutex::new(Vec::new()));
        let bar = PciBar {
            index: 0,
            kind: BarKind::Memory32,
            size: 0x4000,
            prefetchable: false,
            addr: 0,
        };
        let fake = Fake {
            bar,
            accesses: accesses.clone(),
        };
        root.attach(5, Arc::new(Mutex::new(fake)), Vec::new())
            .unwrap();
        assert!(root
            .attach(
                5,
                Arc::new(Mutex::new(super::super::host_bridge::HostBridge)),
                Vec::new()
            )
            .is_err());
        assert!(root
            .attach(
                32,
                Arc::new(Mutex::new(super::super::host_bridge::HostBridge)),
                Vec::new()
            )
            .is_err());

        // Type-1 probe: the address register reads back.
        root.write(0, &ENABLE.to_le_bytes());
        let mut d = [0u8; 4];
        root.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), ENABLE);
        // Host bridge class, device ids, empty slot, disabled access, other bus.
        root.write(0, &cfg_addr(0, 2));
        root.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d) >> 16, 0x0600);
        root.write(0, &cfg_addr(5, 0));
        let mut w = [0u8; 2];
        root.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x1234);
        root.write(0, &cfg_addr(7, 0));
        root.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        root.write(0, &((1 << 16) | ENABLE).to_le_bytes());
        root.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);

        // BAR0 was placed at the start of the MMIO window and answers on the MMIO bus.
        root.write(0, &cfg_addr(5, 4));
        root.read(4, &mut d);
        let base = u64::from(u32::from_le_bytes(d));
        assert_eq!(base, PCI_MMIO_START);
        let mut b = [0u8; 1];
        assert!(ctx.mmio.read().unwrap().read(base + 7, &mut b));
        assert_eq!(b[0], 7);

        // The guest moves the BAR: the old range goes away, the new one works.
        let new = PCI_MMIO_START + 0x10_0000;
        root.write(4, &(new as u32).to_le_bytes());
        assert!(!ctx.mmio.read().unwrap().write(base, &[1]));
        assert!(ctx.mmio.read().unwrap().write(new + 3, &[9]));
        assert_eq!(*accesses.lock().unwrap(), vec![(3, vec![9])]);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::exit::ExitSignal;
    use proptest::prelude::*;

    #[test]
    fn fuzz_pci_config_ports() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let ctx = Arc::new(VcpuContext::new(Arc::new(ExitSignal::default())));
        let mut root = PciRoot::new(vm, ctx);
        root.attach(
            0,
            Arc::new(Mutex::new(super::super::host_bridge::HostBridge)),
            Vec::new(),
        )
        .unwrap();
        let root = Mutex::new(root);
        let cases = 2048;
        eprintln!("fuzz pci_config_ports: {cases} cases");
        proptest!(ProptestConfig::with_cases(cases), |(ops in proptest::collection::vec((any::<bool>(), 0u64..8, proptest::collection::vec(any::<u8>(), 1..=4)), 1..32))| {
            let mut root = root.lock().unwrap();
            for (write, offset, data) in ops {
                if write {
                    root.write(offset, &data);
                } else {
                    let mut buf = data.clone();
                    root.read(offset, &mut buf);
                }
            }
        });
    }
}
