//! The VM-wide KVM state: the in-kernel PIC pair and IOAPIC, the PIT, and the KVM clock.

use std::time::{SystemTime, UNIX_EPOCH};

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// Why the VM-wide state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("KVM {what} failed: {source}")]
pub struct VmStateError {
    /// The ioctl.
    pub what: &'static str,
    /// The error.
    pub source: kvm_ioctls::Error,
}

fn io(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

/// Interrupt controllers, timer and clock of one VM.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// PIC master, PIC slave, IOAPIC (in `KVM_IRQCHIP_*` order).
    pub irqchips: Vec<kvm_irqchip>,
    /// The i8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock at the snapshot.
    pub clock: kvm_clock_data,
    /// Host wall time at the snapshot (ns since the epoch): on restore the guest clock moves
    /// forward by the time that passed, so a clone never runs with a stale wall clock.
    pub saved_at_ns: u64,
}

/// Nanoseconds since the Unix epoch on this host.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl VmState {
    /// Read the state of `vm` (its vCPUs paused).
    pub fn save(vm: &VmFd) -> Result<Self, VmStateError> {
        let mut irqchips = Vec::with_capacity(3);
        for chip_id in [
            KVM_IRQCHIP_PIC_MASTER,
            KVM_IRQCHIP_PIC_SLAVE,
            KVM_IRQCHIP_IOAPIC,
        ] {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip).map_err(io("GET_IRQCHIP"))?;
            irqchips.push(chip);
        }
        Ok(Self {
            irqchips,
            pit: vm.get_pit2().map_err(io("GET_PIT2"))?,
            clock: vm.get_clock().map_err(io("GET_CLOCK"))?,
            saved_at_ns: wall_clock_ns(),
        })
    }

    /// Write the state into `vm`, a fresh VM with its irqchip and PIT created. The clock
    /// resumes at the saved value plus the wall time since the snapshot, with
    /// `KVM_CLOCK_TSC_STABLE` cleared (it described the old host's TSC).
    pub fn restore(&self, vm: &VmFd) -> Result<(), VmStateError> {
        for chip in &self.irqchips {
            vm.set_irqchip(chip).map_err(io("SET_IRQCHIP"))?;
        }
        vm.set_pit2(&self.pit).map_err(io("SET_PIT2"))?;
        let elapsed = wall_clock_ns().saturating_sub(self.saved_at_ns);
        let clock = kvm_clock_data {
            clock: self.clock.clock.saturating_add(elapsed),
            // KVM_SET_CLOCK takes only KVM_CLOCK_REALTIME; the saved flags (TSC_STABLE
            // among them) describe the old host's clock and must not be replayed.
            flags: 0,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(io("SET_CLOCK"))
    }
}
