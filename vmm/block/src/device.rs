//! [`Block`]: the virtio-blk device model (config space, features, activation) and its
//! queue worker.

use std::sync::{Arc, Mutex};

use cloudphone_virtio::{
    read_config_bytes, ActivateError, Activation, DeviceQueue, GuestMemory, VirtioCommon,
    VirtioDevice, VirtioInterrupt, WorkerContext, WorkerHandler,
};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

use crate::backend::{DiskBackend, DiskError};
use crate::request::{
    self, Framing, RequestError, ID_LEN, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, SEG_MAX,
};
use crate::spec::DiskSpec;

/// virtio device ID of a block device.
const VIRTIO_ID_BLOCK: u32 = 2;
/// One request queue of 256 entries.
const QUEUE_SIZES: &[u16] = &[256];
/// `struct virtio_blk_config` up to and including the write-zeroes fields.
const CONFIG_LEN: usize = 60;
/// Logical block size we report (the guest may still address 512-byte sectors).
const BLOCK_SIZE: u32 = 512;

/// A shared, lockable disk: the device keeps it across reset/activate cycles while the worker
/// thread uses it.
type SharedDisk = Arc<Mutex<Box<dyn DiskBackend>>>;

/// A virtio-blk device serving one disk.
pub struct Block {
    disk: SharedDisk,
    id: [u8; ID_LEN],
    config: [u8; CONFIG_LEN],
    common: VirtioCommon,
}

impl Block {
    /// A device for `disk`; `id` (≤ 20 bytes, longer is truncated) answers GET_ID.
    pub fn new(disk: Box<dyn DiskBackend>, id: Option<&str>) -> Self {
        let mut id_bytes = [0u8; ID_LEN];
        if let Some(id) = id {
            let n = id.len().min(ID_LEN);
            id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        }
        let read_only = disk.read_only();
        let mut features = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        features |= if read_only {
            1 << VIRTIO_BLK_F_RO
        } else {
            (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES)
        };
        let mut config = [0u8; CONFIG_LEN];
        let mut put =
            |off: usize, bytes: &[u8]| config[off..off + bytes.len()].copy_from_slice(bytes);
        put(0, &(disk.capacity() / request::SECTOR_SIZE).to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &BLOCK_SIZE.to_le_bytes());
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
        put(56, &[1]); // write_zeroes_may_unmap
        Self {
            disk: Arc::new(Mutex::new(disk)),
            id: id_bytes,
            config,
            common: VirtioCommon::new(VIRTIO_ID_BLOCK, QUEUE_SIZES, features),
        }
    }

    /// Open the disk described by a `--disk` argument and build its device.
    pub fn from_spec(spec: &DiskSpec) -> Result<Self, DiskError> {
        Ok(Self::new(spec.open()?, spec.id.as_deref()))
    }
}

impl VirtioDevice for Block {
    cloudphone_virtio::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn worker_name(&self) -> &str {
        "virtio-blk"
    }
    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let [queue] = Activation::queue_array(a.queues)?;
        Ok(Box::new(BlockWorker {
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
            server: RequestServer {
                disk: self.disk.clone(),
                id: self.id,
                bounce: Vec::new(),
            },
        }))
    }
}

/// The queue side of a [`Block`], running on its [`DeviceWorker`] thread.
struct BlockWorker {
    mem: GuestMemory,
    queue: DeviceQueue,
    interrupt: Arc<dyn VirtioInterrupt>,
    server: RequestServer,
}

/// Turns request chains into disk operations.
struct RequestServer {
    disk: SharedDisk,
    id: [u8; ID_LEN],
    /// Reused data buffer (bounded by `MAX_REQUEST_BYTES`).
    bounce: Vec<u8>,
}

const QUEUE_TOKEN: u64 = 0;

impl RequestServer {
    /// Handle one chain; returns the used length (bytes written to the guest incl. status).
    fn process(
        &mut self,
        mem: &GuestMemory,
        chain: impl Iterator<Item = (GuestAddress, u32, bool)>,
    ) -> u32 {
        let framing = match Framing::new(mem, chain) {
            Ok(f) => f,
            Err(e) => {
                cloudphone_virtio::guest_warn!(error = %e, "virtio-blk: dropping malformed request");
                return 0;
            }
        };
        let status_addr = framing.status;
        let mut disk = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = disk.capacity() / request::SECTOR_SIZE;
        let outcome = framing
            .parse(mem, capacity, disk.read_only())
            .and_then(|op| request::execute(op, mem, disk.as_mut(), &self.id, &mut self.bounce));
        let (status, written) = match outcome {
            Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
            Err(e) => {
                if !matches!(e, RequestError::Unsupported(_)) {
                    cloudphone_virtio::guest_warn!(error = %e, "virtio-blk: request failed");
                }
                (e.status(), 0)
            }
        };
        if mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        written + 1
    }
}

impl BlockWorker {
    fn drain(&mut self) -> Result<(), String> {
        let mem = &self.mem;
        let server = &mut self.server;
        self.queue.drain(mem, self.interrupt.as_ref(), |chain| {
            Ok(server.process(
                mem,
                chain
                    .descriptors()
                    .iter()
                    .map(|d| (d.addr(), d.len(), d.is_write_only())),
            ))
        })
    }
}

impl WorkerHandler for BlockWorker {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        self.queue.watch(ctx, QUEUE_TOKEN)?;
        // The driver may have queued requests before activation completed.
        self.drain().map_err(std::io::Error::other)
    }
    fn handle(
        &mut self,
        _ctx: &WorkerContext,
        _token: u64,
        _events: EventSet,
    ) -> Result<(), String> {
        self.queue.ack_notify();
        self.drain()
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
