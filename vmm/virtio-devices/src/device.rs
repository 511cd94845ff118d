//! The contract between a virtio device model and its transport, and [`VirtioCommon`], the
//! part every device shares: feature negotiation, the worker's lifecycle and the snapshot
//! state of both.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::queue::{DeviceQueue, QueueState, SharedQueueState};
use crate::{DeviceWorker, WorkerHandler};

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
    /// Check that the driver enabled the `expected` number of queues (`got`) before the
    /// device builds its worker.
    pub fn check_queue_count(expected: usize, got: usize) -> Result<(), Self> {
        if got == expected {
            Ok(())
        } else {
            Err(Self::QueueCount { expected, got })
        }
    }
}

/// Copy `config[offset..]` into `data`; bytes past the end of config space read as zero (the
/// guest may read any offset, and must not see host memory or stale bytes there).
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

/// What every device saves for a snapshot: negotiation state and, while activated, where
/// each queue stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommonState {
    /// Feature bits the device offers (a restore checks the snapshot against them).
    pub avail_features: u64,
    /// Feature bits the driver accepted.
    pub acked_features: u64,
    /// The activated queues (empty when the device was not running).
    pub queues: Vec<QueueState>,
}

/// One device's snapshot: the [`CommonState`] plus what only this device type knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceStateBlob {
    /// The virtio device ID, so a blob cannot be restored into another kind of device.
    pub device_type: u32,
    /// Features and queues, saved the same way for every device.
    pub common: CommonState,
    /// Device-specific state; `None` for devices that save only the common part so far.
    pub device: Option<serde_json::Value>,
}

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The blob belongs to another device type.
    #[error("snapshot of virtio device type {found} cannot restore a device of type {expected}")]
    DeviceType { expected: u32, found: u32 },
    /// The snapshot acked features this device does not offer (another build or config).
    #[error("snapshot acked features {acked:#x} outside those offered ({offered:#x})")]
    Features { acked: u64, offered: u64 },
    /// State is restored into a reset device, never under a running worker.
    #[error("cannot restore a snapshot into an activated device; reset it first")]
    Active,
    /// The device has state of its own that snapshots do not capture yet: refusing beats a
    /// restore that silently loses it.
    #[error("virtio device type {device_type} does not support snapshots yet")]
    Unsupported { device_type: u32 },
    /// The device-specific part of the blob is missing or malformed.
    #[error("snapshot state of virtio device type {device_type} is malformed: {reason}")]
    Malformed { device_type: u32, reason: String },
}

impl StateError {
    /// Refuse to save `device`: its own state is not captured yet.
    pub fn unsupported(device: &(impl VirtioDevice + ?Sized)) -> Self {
        Self::Unsupported {
            device_type: device.device_type(),
        }
    }
}

/// The part of a device every device type has (the counterpart of Cloud Hypervisor's
/// `VirtioCommon`): offered and acked features, the worker thread serving the queues, and the
/// queues' snapshot state. Devices embed one and expose it through
/// [`VirtioDevice::common`], which gives them negotiation, reset and save/restore for free.
pub struct VirtioCommon {
    device_type: u32,
    queue_sizes: Vec<u16>,
    avail_features: u64,
    acked_features: u64,
    worker: Option<DeviceWorker>,
    queues: Vec<Arc<SharedQueueState>>,
    /// Queue positions from [`restore_state`](Self::restore_state), applied at the next
    /// activation.
    restored: Vec<QueueState>,
}

impl VirtioCommon {
    /// The common part of a device of `device_type` with queues of at most `queue_sizes`
    /// entries, offering `avail_features`.
    pub fn new(device_type: u32, queue_sizes: &[u16], avail_features: u64) -> Self {
        Self {
            device_type,
            queue_sizes: queue_sizes.to_vec(),
            avail_features,
            acked_features: 0,
            worker: None,
            queues: Vec::new(),
            restored: Vec::new(),
        }
    }

    /// Feature bits offered to the driver.
    pub fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Feature bits the driver accepted (zero after reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Record the driver's features; bits the device did not offer are dropped.
    pub fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// Whether the driver accepted feature `bit`.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// Whether a worker is serving the queues.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// Stop any previous worker and take over the transport's queues (EVENT_IDX as
    /// negotiated, positions from a restored snapshot applied), remembering them for
    /// snapshots.
    fn activate_queues(&mut self, queues: Vec<ActivatedQueue>) -> Vec<DeviceQueue> {
        self.stop_worker();
        let restored = std::mem::take(&mut self.restored);
        let event_idx = self.has_feature(VIRTIO_RING_F_EVENT_IDX);
        let queues: Vec<DeviceQueue> = queues
            .into_iter()
            .map(|mut q| {
                q.queue.set_event_idx(event_idx);
                if let Some(saved) = restored.iter().find(|s| s.index == q.index) {
                    saved.restore_position(&mut q.queue);
                }
                DeviceQueue::new(q)
            })
            .collect();
        self.queues = queues.iter().map(DeviceQueue::shared_state).collect();
        queues
    }

    /// Run `handler` on the device's worker thread `name`.
    fn start(
        &mut self,
        name: &str,
        handler: Box<dyn WorkerHandler>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let worker = DeviceWorker::spawn(name, handler, interrupt)
            .map_err(|e| ActivateError::Backend(format!("cannot start the {name} worker: {e}")))?;
        self.worker = Some(worker);
        Ok(())
    }

    /// Park the worker between events for a snapshot (see [`DeviceWorker::pause`]); true
    /// when the device is idle (parked, or no worker).
    pub fn pause_worker(&self) -> bool {
        self.worker.as_ref().is_none_or(DeviceWorker::pause)
    }

    /// Let a paused worker run again.
    pub fn unpause_worker(&self) {
        if let Some(worker) = &self.worker {
            worker.unpause();
        }
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }

    /// Stop the worker (joining it) and forget the negotiation and the queues, as a device
    /// reset requires.
    pub fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
        self.queues.clear();
    }

    /// The common state now. Consistent when the worker is idle (vCPUs paused); while it runs
    /// each queue's positions are those of its last completed operation.
    pub fn save_state(&self) -> CommonState {
        CommonState {
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            queues: self.queues.iter().map(|q| q.snapshot()).collect(),
        }
    }

    /// Take over a saved negotiation; the saved queue positions apply when the transport next
    /// activates the queues (after it has restored their layout registers).
    pub fn restore_state(&mut self, state: &CommonState) -> Result<(), StateError> {
        if self.is_active() {
            return Err(StateError::Active);
        }
        if state.acked_features & !self.avail_features != 0 {
            return Err(StateError::Features {
                acked: state.acked_features,
                offered: self.avail_features,
            });
        }
        self.acked_features = state.acked_features;
        self.restored = state.queues.clone();
        Ok(())
    }

    /// The blob a device saves: the common state plus its own `device` part, if any.
    pub fn save_blob(&self, device: Option<serde_json::Value>) -> DeviceStateBlob {
        DeviceStateBlob {
            device_type: self.device_type,
            common: self.save_state(),
            device,
        }
    }

    /// Check that `blob` is this device type's and restore its common part; returns the
    /// device-specific part for the device to take over.
    pub fn restore_blob<'a>(
        &mut self,
        blob: &'a DeviceStateBlob,
    ) -> Result<Option<&'a serde_json::Value>, StateError> {
        if blob.device_type != self.device_type {
            return Err(StateError::DeviceType {
                expected: self.device_type,
                found: blob.device_type,
            });
        }
        self.restore_state(&blob.common)?;
        Ok(blob.device.as_ref())
    }
}

/// Parse a device's own part of a snapshot blob into `T`, for devices of `device_type`
/// whose state is required (a missing part is malformed).
pub fn device_part<T: serde::de::DeserializeOwned>(
    device_type: u32,
    part: Option<&serde_json::Value>,
) -> Result<T, StateError> {
    let malformed = |reason: String| StateError::Malformed {
        device_type,
        reason,
    };
    let value = part.ok_or_else(|| malformed("the device part is missing".into()))?;
    T::deserialize(value).map_err(|e| malformed(e.to_string()))
}

/// A device's own part as a blob value (device state types are plain data, so this cannot
/// fail in practice; a failure is reported, not panicked on).
pub fn to_device_part<T: Serialize>(
    device_type: u32,
    state: &T,
) -> Result<Option<serde_json::Value>, StateError> {
    serde_json::to_value(state)
        .map(Some)
        .map_err(|e| StateError::Malformed {
            device_type,
            reason: e.to_string(),
        })
}

/// What a device's worker is built from when the driver brings the device up.
pub struct Activation {
    /// Guest memory, where the rings and buffers are.
    pub mem: GuestMemory,
    /// How the worker signals the guest.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues the driver enabled, in index order.
    pub queues: Vec<DeviceQueue>,
}

impl Activation {
    /// Exactly `N` queues (what most devices need), or why the device cannot start.
    pub fn queue_array<const N: usize>(
        queues: Vec<DeviceQueue>,
    ) -> Result<[DeviceQueue; N], ActivateError> {
        let got = queues.len();
        queues
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: N, got })
    }
}

/// Implements [`VirtioDevice::common`] and [`VirtioDevice::common_mut`] inside a device's
/// `impl VirtioDevice` block, for the [`VirtioCommon`] kept in field `$field`: every device
/// has exactly these two accessors, so they are written once.
#[macro_export]
macro_rules! virtio_common {
    ($field:tt) => {
        fn common(&self) -> &$crate::VirtioCommon {
            &self.$field
        }
        fn common_mut(&mut self) -> &mut $crate::VirtioCommon {
            &mut self.$field
        }
    };
}

/// One virtio device model (block, console, rng, net, vsock, balloon, gpu, input, ...).
///
/// Lifecycle: the transport negotiates features ([`features`](Self::features) /
/// [`ack_features`](Self::ack_features)), lets the driver read/write config space, then calls
/// [`activate`](Self::activate) with the enabled queues once the driver sets DRIVER_OK.
/// [`reset`](Self::reset) (driver wrote 0 to status, or the guest rebooted) stops the device's
/// workers and returns it to the pre-activation state so it can be activated again.
/// Negotiation, activation, reset and snapshots come from the device's [`VirtioCommon`]; a
/// device supplies its config space and [`worker`](Self::worker).
pub trait VirtioDevice: Send {
    /// The device's common part (implement with [`virtio_common!`](crate::virtio_common)).
    fn common(&self) -> &VirtioCommon;
    /// The device's common part, mutably.
    fn common_mut(&mut self) -> &mut VirtioCommon;
    /// The virtio device ID (virtio spec 5: 1 net, 2 block, 3 console, 4 rng, 5 balloon,
    /// 16 gpu, 18 input, 19 vsock).
    fn device_type(&self) -> u32 {
        self.common().device_type
    }
    /// Maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16] {
        &self.common().queue_sizes
    }
    /// Feature bits offered to the driver. The transport always adds `VIRTIO_F_VERSION_1`
    /// and `VIRTIO_RING_F_INDIRECT_DESC` (virtio-queue follows indirect tables). Devices
    /// offer `VIRTIO_RING_F_EVENT_IDX` when their queues go through [`DeviceQueue`], which
    /// handles it; other ring/transport bits (24..=40) are masked off.
    fn features(&self) -> u64 {
        self.common().avail_features()
    }
    /// The subset of [`features`](Self::features) the driver accepted.
    fn ack_features(&mut self, features: u64) {
        self.common_mut().ack_features(features);
    }
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
    /// Name of the device's worker thread.
    fn worker_name(&self) -> &str;
    /// Build the handler that serves the activated queues on the worker thread (after any
    /// previous worker stopped); refuses queue sets the device cannot run with.
    fn worker(&mut self, activation: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError>;
    /// Start processing `queues`: stop a previous worker, wrap the queues in
    /// [`DeviceQueue`]s, and run the device's [`worker`](Self::worker) on its own thread.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        let queues = self.common_mut().activate_queues(queues);
        let handler = self.worker(Activation {
            mem,
            interrupt: interrupt.clone(),
            queues,
        })?;
        let name = self.worker_name().to_string();
        self.common_mut().start(&name, handler, interrupt)
    }
    /// Stop processing and forget the queues; the device may be activated again later.
    /// Devices with state of their own override this and call [`VirtioCommon::reset`] too.
    fn reset(&mut self) {
        self.common_mut().reset();
    }
    /// Save the device for a snapshot. The default saves the common part only (features and
    /// queues), which is all a device without state of its own needs.
    fn save_state(&self) -> Result<DeviceStateBlob, StateError> {
        Ok(self.common().save_blob(None))
    }
    /// Restore a reset device from [`save_state`](Self::save_state)'s blob, before the
    /// transport activates it again. The default restores the common part only.
    fn restore_state(&mut self, blob: &DeviceStateBlob) -> Result<(), StateError> {
        self.common_mut().restore_blob(blob).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Rng, VIRTIO_ID_RNG};
    use crate::testing::hostile::RecordingInterrupt;
    use crate::testing::hostile::{memory_with, queue, HostileRing, RawDesc, DATA};

    const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

    /// Two available one-buffer chains on the fuzz layout.
    fn two_chains() -> GuestMemory {
        let desc = |i: u64| RawDesc {
            addr: DATA + 0x100 * i,
            len: 16,
            flags: 2,
            next: 0,
        };
        memory_with(&HostileRing {
            descs: vec![desc(0), desc(1)],
            heads: vec![0, 1],
            avail_idx: 2,
        })
    }

    fn activated(index: u16) -> ActivatedQueue {
        ActivatedQueue {
            index,
            queue: queue(false),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    #[test]
    fn save_state_reports_features_and_live_queue_positions() {
        let mem = two_chains();
        let mut common = VirtioCommon::new(VIRTIO_ID_RNG, &[16], EVENT_IDX | 1 << 3);
        common.ack_features(EVENT_IDX | 1 << 5);
        assert_eq!(common.acked_features(), EVENT_IDX, "unoffered bits dropped");
        let mut queues = common.activate_queues(vec![activated(0)]);
        let chain = queues[0].pop(&mem).unwrap().unwrap();
        queues[0].add_used(&mem, chain.head(), 4).unwrap();
        queues[0].pop(&mem).unwrap().unwrap();
        let state = common.save_state();
        assert_eq!(state.avail_features, EVENT_IDX | 1 << 3);
        assert_eq!(state.acked_features, EVENT_IDX);
        let q = state.queues[0];
        assert_eq!((q.index, q.size, q.ready, q.event_idx), (0, 16, true, true));
        assert_eq!((q.next_avail, q.next_used), (2, 1));
        assert_eq!(q, queues[0].state());
        common.reset();
        assert_eq!(common.save_state().queues, vec![]);
        assert_eq!(common.acked_features(), 0);
    }

    #[test]
    fn restored_positions_apply_at_the_next_activation() {
        let mem = two_chains();
        let mut saved = VirtioCommon::new(VIRTIO_ID_RNG, &[16, 16], EVENT_IDX);
        saved.ack_features(EVENT_IDX);
        let mut queues = saved.activate_queues(vec![activated(0), activated(1)]);
        queues[1].pop(&mem).unwrap().unwrap();
        let blob = DeviceStateBlob {
            device_type: VIRTIO_ID_RNG,
            common: saved.save_state(),
            device: None,
        };
        let json = serde_json::to_string(&blob).unwrap();
        let blob: DeviceStateBlob = serde_json::from_str(&json).unwrap();

        let mut restored = VirtioCommon::new(VIRTIO_ID_RNG, &[16, 16], EVENT_IDX);
        restored.restore_state(&blob.common).unwrap();
        assert_eq!(restored.acked_features(), EVENT_IDX);
        let queues = restored.activate_queues(vec![activated(0), activated(1)]);
        assert_eq!(queues[0].state().next_avail, 0);
        assert_eq!(queues[1].state().next_avail, 1);
        assert!(queues[1].state().event_idx);
        assert_eq!(restored.save_state(), blob.common);
    }

    #[test]
    fn restore_refuses_other_devices_unoffered_features_and_running_devices() {
        let mut rng = Rng::new();
        let mut blob = rng.save_state().unwrap();
        assert_eq!(blob.device_type, VIRTIO_ID_RNG);
        assert_eq!(blob.device, None, "rng saves the common part only");
        blob.device_type = 1;
        assert!(matches!(
            rng.restore_state(&blob),
            Err(StateError::DeviceType { found: 1, .. })
        ));
        blob.device_type = VIRTIO_ID_RNG;
        blob.common.acked_features = 1 << 7;
        assert!(matches!(
            rng.restore_state(&blob),
            Err(StateError::Features { .. })
        ));
        blob.common.acked_features = EVENT_IDX;
        rng.activate(
            two_chains(),
            Arc::new(RecordingInterrupt::default()),
            vec![activated(0)],
        )
        .unwrap();
        assert!(matches!(rng.restore_state(&blob), Err(StateError::Active)));
        assert_eq!(rng.save_state().unwrap().common.queues.len(), 1);
        rng.reset();
        rng.restore_state(&blob).unwrap();
        assert_eq!(rng.features(), EVENT_IDX);
    }
}
