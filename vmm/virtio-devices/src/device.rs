//! The contract between a virtio device model and its transport.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it. Cloning is cheap (regions are reference counted).
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// Why a device interrupts the guest; the transport maps it to an MSI-X vector or INTx + ISR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptCause {
    /// Buffers were placed in the used ring of this queue.
    Queue(u16),
    /// The device configuration space changed.
    Config,
}

/// How a device raises interrupts. Implemented by the transport (MSI-X/irqfd in the VMM, a
/// counter in tests). Must be callable from device worker threads.
pub trait VirtioInterrupt: Send + Sync {
    /// Raise the interrupt for `cause`.
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()>;
    /// The device hit an unrecoverable error (hostile guest input, backend failure): set
    /// DEVICE_NEEDS_RESET in the status register and raise a config interrupt, as the virtio
    /// spec (2.1.2) asks. The VMM keeps running.
    fn signal_needs_reset(&self);
}

/// A queue handed to a device on activation, after the driver set it up and enabled it.
pub struct ActivatedQueue {
    /// Queue index within the device.
    pub index: u16,
    /// The queue state (ring addresses and size as the driver programmed them).
    pub queue: Queue,
    /// Written (by KVM's ioeventfd or by a test) when the driver notifies this queue.
    pub notify: EventFd,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver enabled a different set of queues than the device needs.
    #[error("device needs {expected} queues, the driver enabled {got}")]
    QueueCount { expected: usize, got: usize },
    /// The device's backend (file, tap, socket, thread) failed to start.
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

impl ActivateError {
    /// Check that the driver enabled exactly `expected` queues (what most devices need before
    /// they start their worker).
    pub fn check_queue_count(expected: usize, queues: &[ActivatedQueue]) -> Result<(), Self> {
        if queues.len() == expected {
            Ok(())
        } else {
            Err(Self::QueueCount {
                expected,
                got: queues.len(),
            })
        }
    }
}

/// One virtio device model (block, console, rng, net, vsock, balloon, gpu, input, ...).
///
/// Lifecycle: the transport negotiates features ([`features`](Self::features) /
/// [`ack_features`](Self::ack_features)), lets the driver read/write config space, then calls
/// [`activate`](Self::activate) with the enabled queues once the driver sets DRIVER_OK.
/// [`reset`](Self::reset) (driver wrote 0 to status, or the guest rebooted) stops the device's
/// workers and returns it to the pre-activation state so it can be activated again.
pub trait VirtioDevice: Send {
    /// The virtio device ID (virtio spec 5: 1 net, 2 block, 3 console, 4 rng, 5 balloon,
    /// 16 gpu, 18 input, 19 vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver. The transport always adds `VIRTIO_F_VERSION_1`
    /// and `VIRTIO_RING_F_INDIRECT_DESC` (virtio-queue follows indirect tables). Offer
    /// `VIRTIO_RING_F_EVENT_IDX` only if the device re-arms `avail_event` and asks
    /// `needs_notification` before interrupting, as [`crate::queue::drain_queue`] /
    /// [`crate::queue::pop_chain`] + [`crate::queue::complete_chain`] do; other ring/transport
    /// bits (24..=40) are masked off.
    fn features(&self) -> u64;
    /// The subset of [`features`](Self::features) the driver accepted.
    fn ack_features(&mut self, features: u64);
    /// Read device-specific config space at `offset`. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device-specific config space. Writes to read-only or out-of-range fields are
    /// logged and ignored (the guest is not trusted).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            device_type = self.device_type(),
            offset,
            len = data.len(),
            "guest wrote read-only device config; ignored"
        );
    }
    /// Start processing `queues` (typically by spawning a [`crate::DeviceWorker`]).
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError>;
    /// Stop processing and forget the queues; the device may be activated again later.
    fn reset(&mut self);
}
