//! [`Balloon`]: the virtio-balloon device model (features, config space, activation).

use std::sync::Arc;

use cloudphone_virtio::{
    read_config_bytes, ActivateError, Activation, VirtioCommon, VirtioDevice, WorkerHandler,
};

use crate::handle::{BalloonHandle, Shared};
use crate::worker::{BalloonWorker, QueueRole, RoleQueue};

/// virtio device ID of a memory balloon.
const VIRTIO_ID_BALLOON: u32 = 5;
const VIRTIO_F_VERSION_1: u32 = 32;
/// The driver reports memory statistics on a third queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// The driver may deflate the balloon when the guest runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// The driver reports free page ranges on their own queue (free page reporting).
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;
/// Inflate, deflate, stats, reporting (the last two only when negotiated).
const QUEUE_SIZES: &[u16] = &[256, 256, 256, 256];
/// `num_pages`, `actual`, `free_page_hint_cmd_id`, `poison_val`.
const CONFIG_LEN: u64 = 16;
/// Offset of the driver-written `actual` field.
const CONFIG_ACTUAL: u64 = 4;

/// A virtio-balloon device. Create it with [`Balloon::new`], keep the [`BalloonHandle`] for the
/// API, and hand the device to the virtio-pci transport.
pub struct Balloon {
    shared: Arc<Shared>,
    common: VirtioCommon,
}

impl Balloon {
    /// A balloon for a guest with `guest_mib` MiB of memory (the largest target accepted).
    pub fn new(guest_mib: u64) -> std::io::Result<(Self, BalloonHandle)> {
        let shared = Shared::new(guest_mib)?;
        let handle = BalloonHandle {
            shared: shared.clone(),
        };
        Ok((
            Self {
                shared,
                common: VirtioCommon::new(
                    VIRTIO_ID_BALLOON,
                    QUEUE_SIZES,
                    (1 << VIRTIO_F_VERSION_1)
                        | (1 << VIRTIO_BALLOON_F_STATS_VQ)
                        | (1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
                        | (1 << VIRTIO_BALLOON_F_REPORTING),
                ),
            },
            handle,
        ))
    }

    /// Another handle to this device.
    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle {
            shared: self.shared.clone(),
        }
    }

    /// Queue roles in index order for the negotiated features (absent queues are skipped,
    /// as Linux does when it numbers them).
    fn roles(&self) -> Vec<QueueRole> {
        let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
        if self.common.has_feature(VIRTIO_BALLOON_F_STATS_VQ) {
            roles.push(QueueRole::Stats);
        }
        if self.common.has_feature(VIRTIO_BALLOON_F_REPORTING) {
            roles.push(QueueRole::Reporting);
        }
        roles
    }

    /// A reset (or rebooted) guest starts with an empty balloon; the target stays, so the
    /// next driver inflates to it again.
    fn clear_guest_state(&self) {
        let mut s = self.shared.lock();
        s.interrupt = None;
        s.actual_pages = 0;
    }
}

impl VirtioDevice for Balloon {
    cloudphone_virtio::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let s = self.shared.lock();
        let mut config = [0u8; CONFIG_LEN as usize];
        config[0..4].copy_from_slice(&s.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&s.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == CONFIG_ACTUAL && data.len() == 4 {
            let actual = u32::from_le_bytes(data.try_into().expect("4 bytes"));
            self.shared.lock().actual_pages = actual;
            return;
        }
        tracing::warn!(
            offset,
            len = data.len(),
            "balloon: guest wrote a read-only config field; ignored"
        );
    }
    fn worker_name(&self) -> &str {
        "virtio-balloon"
    }

    /// Refused until this device's own state is captured (a restore would lose it).
    fn save_state(
        &self,
    ) -> Result<cloudphone_virtio::DeviceStateBlob, cloudphone_virtio::StateError> {
        Err(cloudphone_virtio::StateError::unsupported(self))
    }
    /// Queues get roles in index order for the negotiated features.
    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let roles = self.roles();
        ActivateError::check_queue_count(roles.len(), a.queues.len())?;
        self.clear_guest_state();
        let queues = roles
            .into_iter()
            .zip(a.queues)
            .map(|(role, queue)| RoleQueue { role, queue })
            .collect();
        self.shared.lock().interrupt = Some(a.interrupt.clone());
        Ok(Box::new(BalloonWorker::new(
            a.mem,
            queues,
            self.shared.clone(),
            a.interrupt,
        )))
    }
    fn reset(&mut self) {
        self.clear_guest_state();
        self.common.reset();
    }
}
