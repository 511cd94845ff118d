//! [`Balloon`]: the virtio-balloon device model (features, config space, activation).

use std::sync::Arc;

use cloudphone_virtio::{
    device_part, read_config_bytes, to_device_part, ActivateError, Activation, DeviceStateBlob,
    StateError, VirtioCommon, VirtioDevice, WorkerHandler,
};
use serde::{Deserialize, Serialize};

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
    /// Set by a restore: the next activation continues the saved guest state instead of
    /// starting from an empty balloon.
    restored: bool,
}

/// The balloon's own snapshot state: what the host asked, what the guest gave, the last
/// statistics and the stats buffer the device holds (the driver only reports again once it
/// is returned).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BalloonState {
    /// Target size in 4 KiB pages.
    pub target_pages: u32,
    /// Pages the guest reports in the balloon.
    pub actual_pages: u32,
    /// The last statistics the guest reported.
    pub stats: crate::BalloonStats,
    /// Head of the stats buffer held for the next stats request.
    pub held_stats: Option<u16>,
    /// Bytes released to the host so far.
    pub released_bytes: u64,
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
                restored: false,
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
        s.held_stats = None;
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

    fn save_state(&self) -> Result<DeviceStateBlob, StateError> {
        let state = {
            let s = self.shared.lock();
            BalloonState {
                target_pages: s.target_pages,
                actual_pages: s.actual_pages,
                stats: s.stats.clone(),
                held_stats: s.held_stats,
                released_bytes: s.released_bytes,
            }
        };
        let part = to_device_part(VIRTIO_ID_BALLOON, &state)?;
        Ok(self.common.save_blob(part))
    }
    /// Refuses a target beyond the guest's memory or a held buffer outside the stats queue.
    fn restore_state(&mut self, blob: &DeviceStateBlob) -> Result<(), StateError> {
        let part = self.common.restore_blob(blob)?;
        let state: BalloonState = device_part(VIRTIO_ID_BALLOON, part)?;
        let max_pages = self.shared.guest_mib * 256;
        let bad_held = state.held_stats.is_some_and(|h| h >= QUEUE_SIZES[2]);
        if u64::from(state.target_pages) > max_pages || bad_held {
            return Err(StateError::Malformed {
                device_type: VIRTIO_ID_BALLOON,
                reason: format!(
                    "target {} pages (guest has {max_pages}) or held stats buffer {:?} out of range",
                    state.target_pages, state.held_stats
                ),
            });
        }
        let mut s = self.shared.lock();
        s.target_pages = state.target_pages;
        s.actual_pages = state.actual_pages;
        s.stats = state.stats;
        s.held_stats = state.held_stats;
        s.released_bytes = state.released_bytes;
        self.restored = true;
        Ok(())
    }
    /// Queues get roles in index order for the negotiated features.
    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let roles = self.roles();
        ActivateError::check_queue_count(roles.len(), a.queues.len())?;
        if !std::mem::take(&mut self.restored) {
            self.clear_guest_state();
        }
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
        self.restored = false;
        self.clear_guest_state();
        self.common.reset();
    }
}
