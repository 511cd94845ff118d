//! The virtio 1.x modern PCI transport ([`VirtioPciDevice`]): wraps any [`VirtioDevice`] in
//! a PCI function with vendor capabilities, MSI-X, feature negotiation, queue setup and the
//! device status state machine.
//!
//! BAR layout (fixed, so the VMM can register ioeventfds without asking):
//!
//! | BAR | kind | offset | what |
//! |---|---|---|---|
//! | 0 ([`VIRTIO_BAR`]) | 64-bit memory, 16 KiB | 0x0000 | common configuration |
//! | | | 0x1000 | ISR status (read clears) |
//! | | | 0x2000 | device-specific configuration |
//! | | | 0x3000 | notify: queue `q` at `0x3000 + q * 4` ([`NOTIFY_OFF_MULTIPLIER`]) |
//! | 2 ([`MSIX_BAR`]) | 64-bit memory, >= 4 KiB | 0 | MSI-X table (queues + 1 vectors) |
//! | | | table end | MSI-X PBA |

mod common_cfg;
mod interrupt;
mod queues;
mod state;

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vmm_sys_util::eventfd::EventFd;

use crate::pci::{
    BarKind, BarMove, ConfigError, MsiSink, PciBar, PciConfiguration, PciDevice, PciHeader,
    MSIX_CAP_ID,
};
use crate::{ActivatedQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use common_cfg::{decode, extract64, merge64, Field, COMMON_CFG_LEN};
use interrupt::InterruptState;
pub use interrupt::{ISR_CONFIG, ISR_QUEUE, NO_VECTOR};
pub use queues::QueueError;
use queues::{build_queue, QueueRegs};
pub use state::{QueueRegsState, RestoreError, TransportState};

/// PCI vendor ID of virtio devices.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern virtio device IDs are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID we present (any value >= 0x40 marks a non-transitional device).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// BAR holding the virtio capability regions.
pub const VIRTIO_BAR: usize = 0;
/// Size of [`VIRTIO_BAR`].
pub const VIRTIO_BAR_SIZE: u64 = 0x4000;
/// Offset of the common configuration in [`VIRTIO_BAR`].
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Offset of the ISR status byte in [`VIRTIO_BAR`].
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device-specific configuration in [`VIRTIO_BAR`].
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Offset of the notification area in [`VIRTIO_BAR`].
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Each region spans this many bytes of [`VIRTIO_BAR`].
const REGION_SIZE: u64 = 0x1000;
/// Most queues one device may have (the notify region holds one slot per queue).
pub const MAX_QUEUES: usize = (REGION_SIZE / NOTIFY_OFF_MULTIPLIER as u64) as usize;
/// BAR holding the MSI-X table and PBA.
pub const MSIX_BAR: usize = 2;

const VENDOR_CAP_ID: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;

/// Features the transport/queue layer implements for every device.
const TRANSPORT_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// Offered only when the device asks for it: the device must then keep `avail_event` up to
/// date (`Queue::enable_notification`) and ask `Queue::needs_notification` before interrupting.
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// Feature bits 24..=40 belong to the transport/ring; a device cannot offer those itself.
const TRANSPORT_FEATURE_BITS: u64 = ((1 << 41) - 1) & !((1 << 24) - 1);
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;

/// Why a virtio-pci function could not be built (a device or VMM bug, never guest input).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device declares no queues or more than the notify area holds.
    #[error("device declares {0} queues; the virtio-pci transport supports 1..={MAX_QUEUES}")]
    QueueCount(usize),
    /// A queue maximum size is not a power of two in 1..=32768.
    #[error("queue {queue} maximum size {size} is not a power of two in 1..=32768")]
    MaxQueueSize { queue: usize, size: u16 },
    /// The kernel refused an eventfd (fd limit?).
    #[error("cannot create the queue notification eventfd (check the fd limit): {0}")]
    EventFd(io::Error),
    /// Building the PCI configuration space failed.
    #[error("building the PCI configuration space failed: {0}")]
    Config(#[from] ConfigError),
}

/// A virtio device behind the modern virtio-pci transport.
///
/// The VMM puts it on its PCI bus, places its BARs ([`PciDevice::set_bar_address`]),
/// registers [`notify_eventfds`](Self::notify_eventfds) as KVM ioeventfds, and implements
/// [`MsiSink`] with irqfds. Guest register accesses then drive everything else.
pub struct VirtioPciDevice {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    config: PciConfiguration,
    caps: CapOffsets,
    interrupt: Arc<InterruptState>,
    notify: Vec<EventFd>,
    // Common configuration registers.
    offered_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    status: u8,
    activated: bool,
}

impl VirtioPciDevice {
    /// Wrap `device`, whose queues live in `mem` and whose interrupts go to `msi`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        msi: Arc<dyn MsiSink>,
    ) -> Result<Self, TransportError> {
        let max_sizes = device.queue_max_sizes().to_vec();
        if max_sizes.is_empty() || max_sizes.len() > MAX_QUEUES {
            return Err(TransportError::QueueCount(max_sizes.len()));
        }
        for (queue, &size) in max_sizes.iter().enumerate() {
            if !size.is_power_of_two() || size > 32768 {
                return Err(TransportError::MaxQueueSize { queue, size });
            }
        }
        let notify = max_sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(TransportError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let interrupt = Arc::new(InterruptState::new(max_sizes.len(), msi));
        let (config, caps) = build_config_space(device.device_type(), max_sizes.len(), &interrupt)?;
        let offered_features =
            device.features() & !(TRANSPORT_FEATURE_BITS & !EVENT_IDX) | TRANSPORT_FEATURES;
        Ok(Self {
            device,
            mem,
            config,
            caps,
            interrupt,
            notify,
            offered_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            queues: max_sizes.into_iter().map(QueueRegs::new).collect(),
            status: 0,
            activated: false,
        })
    }

    /// Queue notification eventfds as `(offset in VIRTIO_BAR, eventfd)`, one per queue.
    /// Register each with KVM as an ioeventfd at `BAR address + offset` (no datamatch; length
    /// 0 or 2: Linux writes the 16-bit queue index). Re-register when the BAR moves.
    pub fn notify_eventfds(&self) -> Vec<(u64, &EventFd)> {
        self.notify
            .iter()
            .enumerate()
            .map(|(q, fd)| (notify_offset(q), fd))
            .collect()
    }

    /// The device status register as the driver reads it (includes DEVICE_NEEDS_RESET).
    pub fn device_status(&self) -> u8 {
        if self.interrupt.needs_reset() {
            self.status | NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device was activated (DRIVER_OK accepted and queues handed over).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The interrupt object handed to the device; lets the VMM (or a test) inject a config
    /// change interrupt, e.g. after resizing a disk.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }

    fn selected_queue(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let Some(field) = decode(offset, data.len()) else {
            crate::guest_warn!(
                offset,
                len = data.len(),
                "bad virtio common config read; returns 0"
            );
            data.fill(0);
            return;
        };
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let qsel = usize::from(self.queue_select);
        let value: u64 = match field {
            Field::DeviceFeatureSelect => self.device_feature_select.into(),
            Field::DeviceFeature => feature_word(self.offered_features, self.device_feature_select),
            Field::DriverFeatureSelect => self.driver_feature_select.into(),
            Field::DriverFeature => feature_word(self.driver_features, self.driver_feature_select),
            Field::ConfigMsixVector => self.interrupt.config_vector().into(),
            Field::NumQueues => self.queues.len() as u64,
            Field::DeviceStatus => self.device_status().into(),
            Field::ConfigGeneration => self.interrupt.config_generation().into(),
            Field::QueueSelect => self.queue_select.into(),
            // A non-existent queue reads as size 0 (virtio spec 4.1.4.3.1).
            Field::QueueSize => q.map_or(0, |q| q.size.into()),
            Field::QueueMsixVector => self.interrupt.queue_vector(qsel).into(),
            Field::QueueEnable => q.map_or(0, |q| q.enabled.into()),
            Field::QueueNotifyOff => q.map_or(0, |_| qsel as u64),
            Field::QueueDesc(p) => q.map_or(0, |q| extract64(q.desc, p)),
            Field::QueueDriver(p) => q.map_or(0, |q| extract64(q.driver, p)),
            Field::QueueDevice(p) => q.map_or(0, |q| extract64(q.device, p)),
        };
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let Some(field) = decode(offset, data.len()) else {
            crate::guest_warn!(
                offset,
                len = data.len(),
                "bad virtio common config write; ignored"
            );
            return;
        };
        let mut raw = [0u8; 8];
        raw[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(raw);
        let queue_locked = self.status & DRIVER_OK != 0;
        match field {
            Field::DeviceFeatureSelect => self.device_feature_select = value as u32,
            Field::DriverFeatureSelect => self.driver_feature_select = value as u32,
            Field::DriverFeature => self.write_driver_features(value as u32),
            Field::ConfigMsixVector => self.interrupt.set_config_vector(value as u16),
            Field::DeviceStatus => self.write_status(value as u8),
            Field::QueueSelect => self.queue_select = value as u16,
            Field::QueueMsixVector => self
                .interrupt
                .set_queue_vector(usize::from(self.queue_select), value as u16),
            _ if queue_locked => {
                crate::guest_warn!(?field, "queue register written after DRIVER_OK; ignored");
            }
            Field::QueueSize => self.with_queue(|q| q.size = value as u16),
            Field::QueueEnable if value == 1 => self.with_queue(|q| q.enabled = true),
            Field::QueueDesc(p) => self.with_queue(|q| q.desc = merge64(q.desc, p, value)),
            Field::QueueDriver(p) => self.with_queue(|q| q.driver = merge64(q.driver, p, value)),
            Field::QueueDevice(p) => self.with_queue(|q| q.device = merge64(q.device, p, value)),
            _ => crate::guest_warn!(
                ?field,
                value,
                "read-only or invalid virtio register write ignored"
            ),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut QueueRegs)) {
        let selected = self.queue_select;
        match self.selected_queue() {
            Some(q) => f(q),
            None => crate::guest_warn!(queue = selected, "write to a queue that does not exist"),
        }
    }

    fn write_driver_features(&mut self, word: u32) {
        if self.status & FEATURES_OK != 0 {
            crate::guest_warn!("driver features written after FEATURES_OK; ignored");
            return;
        }
        let shift = match self.driver_feature_select {
            0 => 0,
            1 => 32,
            sel => {
                crate::guest_warn!(sel, "driver feature word beyond 64 bits ignored");
                return;
            }
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffffu64 << shift)) | u64::from(word) << shift;
    }

    /// The device status state machine (virtio spec 2.1, 3.1.1).
    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        if self.status & !value != 0 {
            crate::guest_warn!(
                old = self.status,
                new = value,
                "driver cleared status bits without a reset; ignored"
            );
            return;
        }
        let added = value & !self.status;
        let mut accepted = value;
        if added & FEATURES_OK != 0 && !self.features_acceptable_for(self.driver_features) {
            accepted &= !FEATURES_OK;
        }
        if added & DRIVER_OK != 0 && accepted & FEATURES_OK == 0 {
            crate::guest_warn!("DRIVER_OK without FEATURES_OK; device left inactive");
            accepted &= !DRIVER_OK;
        }
        self.status = accepted;
        if added & accepted & FEATURES_OK != 0 {
            self.device.ack_features(self.driver_features);
        }
        if added & accepted & DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Whether FEATURES_OK can be accepted with the driver's `features`.
    fn features_acceptable_for(&self, features: u64) -> bool {
        let unoffered = features & !self.offered_features;
        if unoffered != 0 {
            crate::guest_warn!(
                unoffered,
                "driver accepted features the device did not offer; FEATURES_OK refused"
            );
            return false;
        }
        if features & 1 << VIRTIO_F_VERSION_1 == 0 {
            crate::guest_warn!("driver did not accept VIRTIO_F_VERSION_1 (legacy drivers unsupported); FEATURES_OK refused");
            return false;
        }
        true
    }

    fn activate(&mut self) {
        if let Err(e) = self.try_activate() {
            self.fail_activation(&e);
        }
    }

    /// Hand the enabled queues to the device and start it; why not, as text.
    fn try_activate(&mut self) -> Result<(), String> {
        let queues = self.activated_queues()?;
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device
            .activate(self.mem.clone(), interrupt, queues)
            .map_err(|e| e.to_string())?;
        self.activated = true;
        Ok(())
    }

    fn fail_activation(&self, reason: &str) {
        crate::guest_log!(
            error,
            device_type = self.device.device_type(),
            reason,
            "virtio device activation failed"
        );
        self.interrupt.signal_needs_reset();
    }

    fn activated_queues(&self) -> Result<Vec<ActivatedQueue>, String> {
        let event_idx = self.driver_features & EVENT_IDX != 0;
        let mut out = Vec::new();
        for (index, regs) in self.queues.iter().enumerate().filter(|(_, q)| q.enabled) {
            let index = index as u16;
            let queue =
                build_queue(index, regs, event_idx, &self.mem).map_err(|e| e.to_string())?;
            let notify = self.notify[usize::from(index)]
                .try_clone()
                .map_err(|e| format!("cannot duplicate queue {index} eventfd: {e}"))?;
            out.push(ActivatedQueue {
                index,
                queue,
                notify,
            });
        }
        Ok(out)
    }

    /// Device reset (driver wrote 0 to status): stop the device and return every virtio
    /// register to its initial value so the driver (or a rebooted guest) can start over.
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.interrupt.reset();
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        self.status = 0;
    }

    fn virtio_bar_read(&self, offset: u64, data: &mut [u8]) {
        match region(offset) {
            (COMMON_CFG_OFFSET, off) => self.common_read(off, data),
            (ISR_OFFSET, 0) if data.len() == 1 => data[0] = self.interrupt.take_isr(),
            (DEVICE_CFG_OFFSET, off) => self.device.read_config(off, data),
            _ => {
                tracing::debug!(
                    offset,
                    len = data.len(),
                    "read of an unused virtio BAR area"
                );
                data.fill(0);
            }
        }
    }

    fn virtio_bar_write(&mut self, offset: u64, data: &[u8]) {
        match region(offset) {
            (COMMON_CFG_OFFSET, off) => self.common_write(off, data),
            (DEVICE_CFG_OFFSET, off) => self.device.write_config(off, data),
            (NOTIFY_OFFSET, off) => self.notify_write(off),
            _ => crate::guest_warn!(
                offset,
                len = data.len(),
                "write to a read-only or unused virtio BAR area ignored"
            ),
        }
    }

    /// Fallback for a notify write KVM did not catch with an ioeventfd.
    fn notify_write(&self, offset: u64) {
        let queue = offset / u64::from(NOTIFY_OFF_MULTIPLIER);
        match self.notify.get(queue as usize) {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    tracing::error!(queue, error = %e, "queue notification eventfd write failed");
                }
            }
            None => crate::guest_warn!(queue, "notify for a queue that does not exist ignored"),
        }
    }

    /// Guest read of a BAR. Takes `&self`: reads only clear the ISR, which is atomic, so
    /// the VIRTIO_PCI_CAP_PCI_CFG window can read BARs from a config space read.
    fn read_bar(&self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            VIRTIO_BAR if offset < VIRTIO_BAR_SIZE => self.virtio_bar_read(offset, data),
            MSIX_BAR => {
                let msix = self.interrupt.msix();
                match offset.checked_sub(msix.table_bytes()) {
                    None => msix.table_read(offset, data),
                    Some(pba_offset) => msix.pba_read(pba_offset, data),
                }
            }
            _ => {
                crate::guest_warn!(bar, offset, "read outside the virtio-pci BARs; returns 0");
                data.fill(0);
            }
        }
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            VIRTIO_BAR if offset < VIRTIO_BAR_SIZE => self.virtio_bar_write(offset, data),
            MSIX_BAR => {
                let interrupt = self.interrupt.clone();
                let mut msix = interrupt.msix();
                match offset.checked_sub(msix.table_bytes()) {
                    None => msix.table_write(offset, data, interrupt.sink()),
                    Some(pba_offset) => msix.pba_write(pba_offset, data),
                }
            }
            _ => crate::guest_warn!(bar, offset, "write outside the virtio-pci BARs ignored"),
        }
    }

    /// The BAR access the VIRTIO_PCI_CAP_PCI_CFG window selects: (bar, offset, length), or
    /// None when the driver programmed an invalid length or alignment.
    fn pci_cfg_window(&self) -> Option<(usize, u64, usize)> {
        let cap = self.caps.pci_cfg;
        let mut raw = [0u8; 12];
        self.config.read_bytes(cap + 4, &mut raw);
        let bar = usize::from(raw[0]);
        let offset = u64::from(u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]));
        let len = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize;
        if matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 {
            Some((bar, offset, len))
        } else {
            crate::guest_warn!(
                bar,
                offset,
                len,
                "invalid VIRTIO_PCI_CAP_PCI_CFG window; access ignored"
            );
            None
        }
    }

    fn pci_cfg_data_reg(&self) -> usize {
        (self.caps.pci_cfg + 16) / 4
    }
}

fn notify_offset(queue: usize) -> u64 {
    NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// Split a VIRTIO_BAR offset into (region base, offset within the region).
fn region(offset: u64) -> (u64, u64) {
    let base = offset - offset % REGION_SIZE;
    (base, offset - base)
}

fn feature_word(features: u64, select: u32) -> u64 {
    match select {
        0 => features & 0xffff_ffff,
        1 => features >> 32,
        _ => 0,
    }
}

/// PCI class code for a virtio device type, so guests and tools (lspci) see sensible classes.
fn class_code(device_type: u32) -> (u8, u8, u8) {
    match device_type {
        1 => (0x02, 0x00, 0x00),  // network: Ethernet
        2 => (0x01, 0x80, 0x00),  // mass storage: other
        3 => (0x07, 0x80, 0x00),  // communication: other
        16 => (0x03, 0x80, 0x00), // display: other
        18 => (0x09, 0x80, 0x00), // input: other
        _ => (0xff, 0x00, 0x00),  // unassigned class
    }
}

/// Where the capabilities the transport intercepts live in config space.
#[derive(Clone, Copy, Debug)]
struct CapOffsets {
    msix: usize,
    pci_cfg: usize,
}

/// Header, BARs, the virtio capabilities (common, notify, ISR, device, PCI config access)
/// and MSI-X.
fn build_config_space(
    device_type: u32,
    num_queues: usize,
    interrupt: &InterruptState,
) -> Result<(PciConfiguration, CapOffsets), ConfigError> {
    let mut config = PciConfiguration::new(PciHeader {
        vendor_id: VIRTIO_PCI_VENDOR_ID,
        device_id: VIRTIO_PCI_DEVICE_ID_BASE.wrapping_add(device_type as u16),
        revision: 1,
        class: class_code(device_type),
        subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
        subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        interrupt_pin: 0,
    });
    config.add_bar(VIRTIO_BAR, BarKind::Memory64, VIRTIO_BAR_SIZE, false)?;
    let msix = interrupt.msix();
    let msix_bytes = msix.table_bytes() + msix.pba_bytes();
    config.add_bar(
        MSIX_BAR,
        BarKind::Memory64,
        msix_bytes.next_power_of_two().max(0x1000),
        false,
    )?;
    let notify_len = num_queues as u32 * NOTIFY_OFF_MULTIPLIER;
    for (cfg_type, offset, len) in [
        (CAP_COMMON, COMMON_CFG_OFFSET, COMMON_CFG_LEN),
        (CAP_NOTIFY, NOTIFY_OFFSET, notify_len),
        (CAP_ISR, ISR_OFFSET, 1),
        (CAP_DEVICE, DEVICE_CFG_OFFSET, REGION_SIZE as u32),
    ] {
        let mut body = vec![16, cfg_type, VIRTIO_BAR as u8, 0, 0, 0];
        body.extend_from_slice(&(offset as u32).to_le_bytes());
        body.extend_from_slice(&len.to_le_bytes());
        if cfg_type == CAP_NOTIFY {
            body[0] = 20;
            body.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        }
        config.add_capability(VENDOR_CAP_ID, &body, &[])?;
    }
    let table_bytes = u32::try_from(msix.table_bytes()).unwrap_or(u32::MAX);
    let (body, writable) = msix.capability(MSIX_BAR as u8, 0, MSIX_BAR as u8, table_bytes);
    let msix = config.add_capability(MSIX_CAP_ID, &body, &writable)?;
    // VIRTIO_PCI_CAP_PCI_CFG (virtio spec 4.1.4.9): a window into the BARs through config
    // space for drivers that cannot map them. bar, offset, length and data are writable.
    let mut body = vec![20, CAP_PCI_CFG, 0, 0, 0, 0];
    body.extend_from_slice(&[0; 12]);
    let writable = [
        0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let pci_cfg = config.add_capability(VENDOR_CAP_ID, &body, &writable)?;
    Ok((config, CapOffsets { msix, pci_cfg }))
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&self, reg: usize) -> u32 {
        if reg == self.pci_cfg_data_reg() {
            let mut buf = [0u8; 4];
            if let Some((bar, offset, len)) = self.pci_cfg_window() {
                self.read_bar(bar, offset, &mut buf[..len]);
            }
            return u32::from_le_bytes(buf);
        }
        self.config.read_reg(reg)
    }

    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let moved = self.config.write_reg(reg, offset, data);
        if reg == self.pci_cfg_data_reg() {
            if let Some((bar, bar_offset, len)) = self.pci_cfg_window() {
                let value = self.config.read_reg(reg).to_le_bytes();
                self.write_bar(bar, bar_offset, &value[..len]);
            }
        }
        if reg == self.caps.msix / 4 {
            let control = (self.config.read_reg(reg) >> 16) as u16;
            let interrupt = self.interrupt.clone();
            interrupt.msix().set_control(control, interrupt.sink());
        }
        moved
    }

    fn bars(&self) -> Vec<PciBar> {
        self.config.bars()
    }

    fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<(), ConfigError> {
        self.config.set_bar_address(index, addr)
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.read_bar(bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.write_bar(bar, offset, data);
    }

    fn virtio_state(&self) -> Result<Option<TransportState>, crate::StateError> {
        self.save_state().map(Some)
    }

    fn quiesce(&self) -> bool {
        self.device.common().pause_worker()
    }

    fn unquiesce(&self) {
        self.device.common().unpause_worker();
    }

    fn resume(&mut self) -> Result<(), RestoreError> {
        VirtioPciDevice::resume(self)
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        if self.activated {
            self.device.reset();
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;
