//! The PCI root: configuration mechanism #1 on ports 0xCF8-0xCFF, slot table, BAR placement
//! and remapping (MMIO bus regions + ioeventfds follow the BAR).

use std::sync::{Arc, Mutex};

use cloudphone_virtio::pci::{BarKind, BarMove, PciDevice};
use cloudphone_virtio::transport::TransportState;
use cloudphone_virtio::StateError;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{PCI_MMIO_SIZE, PCI_MMIO_START};
use crate::bus::{lock, BusDevice};
use crate::vcpu::VcpuContext;

/// CONFIG_ADDRESS port; CONFIG_DATA is at +4.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;
/// Ports covered (address + data).
pub const PCI_CONFIG_PORT_LEN: u16 = 8;
const SLOTS: usize = 32;
const ENABLE: u32 = 1 << 31;

/// A PCI function shared between the root (config space) and its BAR regions (MMIO).
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

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
    /// A restored device could not start again.
    #[error("the restored device at PCI slot {slot} cannot start: {source}")]
    Resume {
        /// Its slot.
        slot: u8,
        /// Why.
        source: cloudphone_virtio::transport::RestoreError,
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

/// One occupied slot's snapshot: what [`PciRoot::save_slots`] returns and a restore hands
/// back to `VirtioPciDevice::restore` + [`PciRoot::attach_restored`] for the same slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotState {
    /// PCI slot (device number on bus 0).
    pub slot: u8,
    /// The virtio-pci function's state.
    pub transport: TransportState,
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

    /// Whether `slot` holds a device.
    pub fn is_occupied(&self, slot: u8) -> bool {
        self.slots
            .get(usize::from(slot))
            .is_some_and(Option::is_some)
    }

    /// The snapshot state of every slot that has any (virtio functions), in slot order.
    /// Fails on the first device that cannot save its state, naming the slot.
    pub fn save_slots(&self) -> Result<Vec<SlotState>, (u8, StateError)> {
        let mut out = Vec::new();
        for (slot, d) in self.devices() {
            if let Some(transport) = lock(d).virtio_state().map_err(|e| (slot, e))? {
                out.push(SlotState { slot, transport });
            }
        }
        Ok(out)
    }

    fn check_free(&self, slot: u8) -> Result<(), PciError> {
        if self.is_occupied(slot) || usize::from(slot) >= SLOTS {
            return Err(PciError::Slot(slot));
        }
        Ok(())
    }

    /// Hold every function's device still for a snapshot (workers parked between events);
    /// returns the slots whose device did not settle in time. Undo with
    /// [`unquiesce_all`](Self::unquiesce_all).
    pub fn quiesce_all(&self) -> Vec<u8> {
        self.devices()
            .filter(|(_, d)| !lock(d).quiesce())
            .map(|(slot, _)| slot)
            .collect()
    }

    /// Let every device run again after [`quiesce_all`](Self::quiesce_all).
    pub fn unquiesce_all(&self) {
        for (_, d) in self.devices() {
            lock(d).unquiesce();
        }
    }

    fn devices(&self) -> impl Iterator<Item = (u8, &SharedPciDevice)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| Some((slot as u8, &s.as_ref()?.device)))
    }

    /// Start every restored function the guest's driver had started (after the vCPUs and
    /// interrupt controllers are restored, so their first interrupts are not lost).
    pub fn resume_all(&self) -> Result<(), PciError> {
        for (slot, d) in self.devices() {
            lock(d)
                .resume()
                .map_err(|source| PciError::Resume { slot, source })?;
        }
        Ok(())
    }

    /// Attach a restored `device` at `slot` with its BARs where the snapshot had them
    /// (already set in the device; unplaced BARs stay unmapped): map them and their
    /// ioeventfds, and keep later boot-time allocations above them. Overlapping another
    /// function's BAR fails as the MMIO bus refuses it.
    pub fn attach_restored(
        &mut self,
        slot: u8,
        device: SharedPciDevice,
        notify: NotifyFds,
    ) -> Result<(), PciError> {
        self.attach_with(slot, device, notify, false)
    }

    /// Attach `device` at `slot`: place its memory BARs in the MMIO hole, map them, and turn
    /// its queue notify addresses (`notify`) into ioeventfds.
    pub fn attach(
        &mut self,
        slot: u8,
        device: SharedPciDevice,
        notify: NotifyFds,
    ) -> Result<(), PciError> {
        self.attach_with(slot, device, notify, true)
    }

    /// Map `device`'s memory BARs (placing them first when `place`, else where they are).
    fn attach_with(
        &mut self,
        slot: u8,
        device: SharedPciDevice,
        notify: NotifyFds,
        place: bool,
    ) -> Result<(), PciError> {
        self.check_free(slot)?;
        let bars = lock(&device).bars();
        for bar in bars.iter().filter(|b| b.kind != BarKind::Io) {
            let addr = if place {
                let addr = self.allocate(bar.size)?;
                lock(&device)
                    .set_bar_address(bar.index, addr)
                    .map_err(|e| PciError::Bar {
                        bar: bar.index,
                        reason: e.to_string(),
                    })?;
                addr
            } else if bar.addr == 0 {
                continue;
            } else {
                if (PCI_MMIO_START..PCI_MMIO_START + PCI_MMIO_SIZE).contains(&bar.addr) {
                    self.next_mmio = self.next_mmio.max(bar.addr + bar.size);
                }
                bar.addr
            };
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
                    cloudphone_virtio::guest_warn!(error = %e, "cannot remove an ioeventfd");
                }
            }
        }
        if mv.new == 0 {
            return;
        }
        if let Err(e) = self.map_bar(&s.device, &s.notify, mv.bar, mv.new, mv.size) {
            cloudphone_virtio::guest_warn!(slot, bar = mv.bar, new = format_args!("{:#x}", mv.new), error = %e,
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

    /// A restored virtio function answers at the BAR addresses it was saved with, its
    /// notify address is an ioeventfd again, and the allocator stays clear of it.
    #[test]
    fn restored_function_keeps_its_bars() {
        use cloudphone_virtio::transport::{VIRTIO_BAR, VIRTIO_PCI_VENDOR_ID};
        use cloudphone_virtio::{MsiSink, MsixMessage, VirtioPciDevice};
        struct NoMsi;
        impl MsiSink for NoMsi {
            fn program(&self, _: u16, _: MsixMessage) {}
            fn trigger(&self, _: u16) -> std::io::Result<()> {
                Ok(())
            }
        }
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let function = |saved: Option<&SlotState>| {
            let rng = Box::new(cloudphone_virtio::rng::Rng::new());
            let sink = Arc::new(NoMsi);
            let dev = match saved {
                Some(s) => VirtioPciDevice::restore(rng, mem.clone(), sink, &s.transport).unwrap(),
                None => VirtioPciDevice::new(rng, mem.clone(), sink).unwrap(),
            };
            let notify = dev
                .notify_eventfds()
                .into_iter()
                .map(|(off, fd)| (VIRTIO_BAR, off, fd.try_clone().unwrap()))
                .collect();
            (Arc::new(Mutex::new(dev)), notify)
        };
        let root_on = |vm: &Arc<VmFd>| {
            let ctx = Arc::new(VcpuContext::new(Arc::new(ExitSignal::default())));
            (PciRoot::new(vm.clone(), ctx.clone()), ctx)
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let (mut first, _) = root_on(&vm);
        // Something before it, so its BARs are not where a fresh allocation would put them.
        let (filler, notify) = function(None);
        first.attach(3, filler, notify).unwrap();
        let (dev, notify) = function(None);
        first.attach(5, dev, notify).unwrap();
        let saved = first.save_slots().unwrap();
        assert_eq!(saved.iter().map(|s| s.slot).collect::<Vec<_>>(), [3, 5]);
        let bars = saved[1].transport.bars.clone();
        assert!(bars.iter().all(|b| b.addr > PCI_MMIO_START));

        let vm = Arc::new(kvm.create_vm().unwrap());
        let (mut restored, ctx) = root_on(&vm);
        let (dev, notify) = function(Some(&saved[1]));
        restored.attach_restored(5, dev.clone(), notify).unwrap();
        restored.resume_all().unwrap();
        assert!(restored.is_occupied(5) && !restored.is_occupied(3));
        let mut id = [0u8; 2];
        let common = bars[0].addr;
        // Device feature select reads back through the MMIO bus at the saved address.
        assert!(ctx.mmio.read().unwrap().read(common + 0x12, &mut id));
        assert_eq!(u16::from_le_bytes(id), 1, "num_queues of the rng");
        assert_eq!(
            dev.lock().unwrap().config_read(0) & 0xffff,
            u32::from(VIRTIO_PCI_VENDOR_ID)
        );
        // A new allocation lands above the restored BARs.
        let top = bars.iter().map(|b| b.addr).max().unwrap();
        assert!(restored.allocate(0x1000).unwrap() > top);
        // The same slot twice is refused.
        let (dev, notify) = function(Some(&saved[1]));
        assert!(matches!(
            restored.attach_restored(5, dev, notify),
            Err(PciError::Slot(5))
        ));
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
