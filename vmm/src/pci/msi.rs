//! MSI-X delivery: each vector gets a GSI with an MSI route and an irqfd. KVM replaces the
//! whole routing table on every update, so the table also carries the default PIC/IOAPIC
//! routes for GSIs 0-23.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use cloudphone_virtio::pci::{MsiSink, MsixMessage};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins (GSIs 0..24 are the legacy lines).
const IOAPIC_PINS: u32 = 24;
/// KVM's routing table limit.
const MAX_GSI: u32 = 4096;

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi(gsi: u32, m: &MsixMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = m.addr as u32;
    e.u.msi.address_hi = (m.addr >> 32) as u32;
    e.u.msi.data = m.data;
    e
}

/// The VM-wide GSI routing table.
pub struct GsiRoutes {
    vm: Arc<VmFd>,
    msi: Mutex<(u32, BTreeMap<u32, MsixMessage>)>,
}

impl GsiRoutes {
    /// Routes for `vm`; MSI GSIs are allocated from 24 upwards.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            msi: Mutex::new((IOAPIC_PINS, BTreeMap::new())),
        }
    }

    fn allocate(&self) -> io::Result<u32> {
        let mut s = self.msi.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 >= MAX_GSI {
            return Err(io::Error::other("out of KVM GSIs for MSI-X vectors"));
        }
        s.0 += 1;
        Ok(s.0 - 1)
    }

    /// Point `gsi` at `msg` and push the whole table to KVM.
    fn set(&self, gsi: u32, msg: MsixMessage) -> io::Result<()> {
        let mut s = self.msi.lock().unwrap_or_else(|p| p.into_inner());
        s.1.insert(gsi, msg);
        let mut entries: Vec<kvm_irq_routing_entry> = (0..IOAPIC_PINS)
            .map(|gsi| irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi))
            .collect();
        for gsi in 0..16 {
            if gsi == 2 {
                continue; // the cascade
            }
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            entries.push(irqchip(gsi, chip, pin));
        }
        entries.extend(s.1.iter().map(|(gsi, m)| msi(*gsi, m)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
}

/// One PCI function's MSI-X vectors.
pub struct KvmMsiSink {
    routes: Arc<GsiRoutes>,
    vectors: Mutex<BTreeMap<u16, Vector>>,
    max_vectors: u16,
}

impl KvmMsiSink {
    /// A sink for a function with at most `max_vectors` table entries.
    pub fn new(routes: Arc<GsiRoutes>, max_vectors: u16) -> Self {
        Self {
            routes,
            vectors: Mutex::new(BTreeMap::new()),
            max_vectors,
        }
    }

    fn program_vector(&self, vector: u16, msg: MsixMessage) -> io::Result<()> {
        if vector >= self.max_vectors {
            return Err(io::Error::other(format!(
                "MSI-X vector {vector} beyond this function's {} vectors",
                self.max_vectors
            )));
        }
        let mut vectors = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = vectors.get(&vector) {
            return self.routes.set(v.gsi, msg);
        }
        let gsi = self.routes.allocate()?;
        self.routes.set(gsi, msg)?;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)?;
        self.routes
            .vm
            .register_irqfd(&irqfd, gsi)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        vectors.insert(vector, Vector { gsi, irqfd });
        Ok(())
    }
}

impl MsiSink for KvmMsiSink {
    fn program(&self, vector: u16, msg: MsixMessage) {
        if let Err(e) = self.program_vector(vector, msg) {
            cloudphone_virtio::guest_warn!(vector, error = %e, "cannot route MSI-X vector; its interrupts are lost");
        }
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        let vectors = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        match vectors.get(&vector) {
            Some(v) => v.irqfd.write(1),
            None => Err(io::Error::other(format!(
                "MSI-X vector {vector} fired before the guest programmed it"
            ))),
        }
    }
}
