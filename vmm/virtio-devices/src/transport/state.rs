//! Snapshot state of a virtio-pci function ([`TransportState`]): everything the guest's
//! driver programmed (PCI config space, BAR addresses, MSI-X, the virtio common
//! configuration) plus the device's own [`DeviceStateBlob`]. A restore rebuilds the function
//! from it and, when the driver had set DRIVER_OK, starts the device again on the saved queue
//! positions, so the guest's driver simply continues.
//!
//! The state file comes from disk and is not trusted: every value is checked against the
//! device it is restored into and refused with a [`RestoreError`] naming the field, never
//! clamped or panicked on.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};

use super::{TransportError, VirtioPciDevice, DRIVER_OK, FEATURES_OK, NEEDS_RESET, NO_VECTOR};
use crate::pci::{ConfigError, MsiSink, MsixError, MsixState};
use crate::{DeviceStateBlob, GuestMemory, StateError, VirtioDevice};

/// One queue's registers in the common configuration, as the driver left them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegsState {
    /// queue_size (the driver may lower it from the device maximum).
    pub size: u16,
    /// queue_enable.
    pub enabled: bool,
    /// queue_msix_vector ([`NO_VECTOR`] for none).
    pub msix_vector: u16,
    /// queue_desc: guest address of the descriptor table.
    pub desc: u64,
    /// queue_driver: guest address of the available ring.
    pub driver: u64,
    /// queue_device: guest address of the used ring.
    pub device: u64,
}

/// Where the guest (or the VMM at boot) placed one BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarState {
    /// BAR index (0..=5).
    pub index: usize,
    /// Base address; 0 when the BAR is not placed.
    pub addr: u64,
}

/// A virtio-pci function's snapshot: save with [`VirtioPciDevice::save_state`], rebuild with
/// [`VirtioPciDevice::restore`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransportState {
    /// Virtio device type, so a slot cannot be restored with another kind of device.
    pub device_type: u32,
    /// The 64 config-space dwords, writable bits only (command register, MSI-X control,
    /// the PCI-config-access window); BAR registers are in `bars`.
    pub config: Vec<u32>,
    /// BAR addresses as programmed.
    pub bars: Vec<BarState>,
    /// MSI-X table and pending bits.
    pub msix: MsixState,
    /// device_feature_select.
    pub device_feature_select: u32,
    /// driver_feature_select.
    pub driver_feature_select: u32,
    /// The features the driver wrote (all 64 bits).
    pub driver_features: u64,
    /// queue_select.
    pub queue_select: u16,
    /// device_status as the driver wrote it (DEVICE_NEEDS_RESET is in `needs_reset`).
    pub status: u8,
    /// Unread ISR bits (interrupts raised while MSI-X was off).
    pub isr: u8,
    /// Whether the device had flagged DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
    /// config_generation.
    pub config_generation: u8,
    /// config_msix_vector.
    pub config_msix_vector: u16,
    /// Every queue's registers, in index order (one entry per device queue).
    pub queues: Vec<QueueRegsState>,
    /// The device's own state.
    pub device: DeviceStateBlob,
}

/// Why a snapshot could not be restored into a virtio-pci function. The snapshot is then
/// unusable with this VMM build and device configuration; take a new one.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The function could not be built at all.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The snapshot is of another device type.
    #[error("snapshot is of virtio device type {found}, the slot holds type {expected}")]
    DeviceType { expected: u32, found: u32 },
    /// The snapshot has another number of queues than the device.
    #[error("snapshot has {saved} queues, the device has {device}")]
    QueueCount { saved: usize, device: usize },
    /// A queue size the device cannot run with.
    #[error("snapshot queue {queue} size {size} is invalid (power of two, 1..={max})")]
    QueueSize { queue: usize, size: u16, max: u16 },
    /// The device state names a queue the device does not have.
    #[error("snapshot device state has queue {index}, the device has {count}")]
    QueueIndex { index: u16, count: usize },
    /// An MSI-X vector beyond the table.
    #[error("snapshot {what} MSI-X vector {vector} is beyond the {table}-entry table")]
    Vector {
        what: &'static str,
        vector: u16,
        table: u16,
    },
    /// The driver features or status could not have been accepted by this device.
    #[error("snapshot status {status:#x} with driver features {features:#x} is not a state this device accepts (offered {offered:#x})")]
    Negotiation {
        status: u8,
        features: u64,
        offered: u64,
    },
    /// Config space or a BAR address is malformed or misaligned.
    #[error("snapshot PCI config space: {0}")]
    Config(#[from] ConfigError),
    /// A BAR would cover guest RAM.
    #[error("snapshot BAR {bar} at {addr:#x} (size {size:#x}) overlaps guest RAM")]
    BarOverlapsRam { bar: usize, addr: u64, size: u64 },
    /// The MSI-X table has another size.
    #[error("snapshot MSI-X state: {0}")]
    Msix(#[from] MsixError),
    /// The device refused its own state.
    #[error("snapshot device state: {0}")]
    Device(#[from] StateError),
    /// The driver had started the device and it cannot start again with the saved queues.
    #[error("restarting the device with its saved queues failed: {0}")]
    Activation(String),
}

impl VirtioPciDevice {
    /// Everything needed to rebuild this function elsewhere. Call it with the vCPUs paused
    /// (no register access in flight) and the device's worker idle.
    pub fn save_state(&self) -> Result<TransportState, StateError> {
        let (isr, needs_reset, config_generation) = self.interrupt.flags();
        Ok(TransportState {
            device_type: self.device.device_type(),
            config: self.config.save_writable(),
            bars: self
                .config
                .bars()
                .iter()
                .map(|b| BarState {
                    index: b.index,
                    addr: b.addr,
                })
                .collect(),
            msix: self.interrupt.msix().save_state(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            status: self.status,
            isr,
            needs_reset,
            config_generation,
            config_msix_vector: self.interrupt.config_vector(),
            queues: self
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| QueueRegsState {
                    size: q.size,
                    enabled: q.enabled,
                    msix_vector: self.interrupt.queue_vector(i),
                    desc: q.desc,
                    driver: q.driver,
                    device: q.device,
                })
                .collect(),
            device: self.device.save_state()?,
        })
    }

    /// Rebuild a function around a freshly built `device` (same type and configuration as
    /// the saved one) in the saved `state`: registers, BAR addresses, MSI-X (every vector is
    /// programmed into `msi` again) and the device's state. Then [`resume`](Self::resume)
    /// starts it again if the driver had. `mem` must hold the saved guest RAM. The VMM then maps the BARs where [`PciDevice::bars`](crate::PciDevice::bars) says.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        msi: Arc<dyn MsiSink>,
        state: &TransportState,
    ) -> Result<Self, RestoreError> {
        if device.device_type() != state.device_type {
            return Err(RestoreError::DeviceType {
                expected: device.device_type(),
                found: state.device_type,
            });
        }
        let mut pci = Self::new(device, mem, msi)?;
        pci.check(state)?;
        pci.config.restore_writable(&state.config)?;
        for bar in &state.bars {
            pci.restore_bar(*bar)?;
        }
        let control = (pci.config.read_reg(pci.caps.msix / 4) >> 16) as u16;
        let interrupt = pci.interrupt.clone();
        interrupt
            .msix()
            .restore_state(&state.msix, control, interrupt.sink())?;
        let vectors: Vec<u16> = state.queues.iter().map(|q| q.msix_vector).collect();
        interrupt.restore(
            (state.isr, state.needs_reset, state.config_generation),
            state.config_msix_vector,
            &vectors,
        );
        pci.device_feature_select = state.device_feature_select;
        pci.driver_feature_select = state.driver_feature_select;
        pci.driver_features = state.driver_features;
        pci.queue_select = state.queue_select;
        for (regs, saved) in pci.queues.iter_mut().zip(&state.queues) {
            regs.size = saved.size;
            regs.enabled = saved.enabled;
            regs.desc = saved.desc;
            regs.driver = saved.driver;
            regs.device = saved.device;
        }
        pci.status = state.status;
        pci.device.restore_state(&state.device)?;
        Ok(pci)
    }

    /// Start a restored device the driver had started (DRIVER_OK) on its saved queue
    /// positions; a no-op otherwise or when it already runs. Separate from
    /// [`restore`](Self::restore) because a device may interrupt as soon as it runs: the VMM
    /// calls this once the vCPUs and interrupt controllers are restored, so no interrupt is
    /// delivered into a VM that cannot take it yet.
    pub fn resume(&mut self) -> Result<(), RestoreError> {
        if self.status & DRIVER_OK == 0 || self.activated {
            return Ok(());
        }
        self.try_activate().map_err(RestoreError::Activation)
    }

    /// Refuse a state this function could never have been in.
    fn check(&self, state: &TransportState) -> Result<(), RestoreError> {
        let count = self.queues.len();
        if state.queues.len() != count {
            return Err(RestoreError::QueueCount {
                saved: state.queues.len(),
                device: count,
            });
        }
        let table = self.interrupt.msix().size();
        let vector = |what, vector: u16| {
            if vector == NO_VECTOR || vector < table {
                Ok(())
            } else {
                Err(RestoreError::Vector {
                    what,
                    vector,
                    table,
                })
            }
        };
        vector("config", state.config_msix_vector)?;
        for (queue, (regs, saved)) in self.queues.iter().zip(&state.queues).enumerate() {
            let usable = saved.size.is_power_of_two() || !saved.enabled;
            if saved.size > regs.max_size || !usable {
                return Err(RestoreError::QueueSize {
                    queue,
                    size: saved.size,
                    max: regs.max_size,
                });
            }
            vector("queue", saved.msix_vector)?;
        }
        let beyond = |q: &&crate::QueueState| usize::from(q.index) >= count;
        if let Some(q) = state.device.common.queues.iter().find(beyond) {
            return Err(RestoreError::QueueIndex {
                index: q.index,
                count,
            });
        }
        let negotiated = state.status & FEATURES_OK != 0;
        let status_ok = state.status & NEEDS_RESET == 0
            && (state.status & DRIVER_OK == 0 || negotiated)
            && (!negotiated || self.features_acceptable_for(state.driver_features));
        if !status_ok || state.driver_features & !self.offered_features != 0 {
            return Err(RestoreError::Negotiation {
                status: state.status,
                features: state.driver_features,
                offered: self.offered_features,
            });
        }
        Ok(())
    }

    /// Place BAR `bar.index` where the snapshot says, refusing addresses on guest RAM.
    fn restore_bar(&mut self, bar: BarState) -> Result<(), RestoreError> {
        let size = self
            .config
            .bars()
            .iter()
            .find(|b| b.index == bar.index)
            .ok_or(ConfigError::NoSuchBar(bar.index))?
            .size;
        self.config.set_bar_address(bar.index, bar.addr)?;
        let end = bar.addr + (size - 1);
        let on_ram = self
            .mem
            .iter()
            .any(|r| r.start_addr().0 <= end && bar.addr <= r.last_addr().0);
        if bar.addr != 0 && on_ram {
            return Err(RestoreError::BarOverlapsRam {
                bar: bar.index,
                addr: bar.addr,
                size,
            });
        }
        Ok(())
    }
}
