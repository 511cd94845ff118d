//! virtio-vsock: host <-> guest stream sockets without a network, backed by Unix sockets in
//! Firecracker's hybrid style (see [`muxer`]). The phone's adb-like shell is guest port 5555.

mod conn;
mod handler;
mod muxer;
mod packet;
mod spec;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use cloudphone_virtio::{
    ActivateError, ActivatedQueue, DeviceWorker, GuestMemory, VirtioDevice, VirtioInterrupt,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub use spec::{VsockSpec, VsockSpecError};

use crate::queue::DeviceQueue;
use handler::VsockHandler;
use muxer::Muxer;

/// virtio device ID of vsock (virtio spec 5.10).
const VIRTIO_ID_VSOCK: u32 = 19;
/// Descriptors per queue (rx, tx, event).
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];

/// Why a vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// Something other than a stale socket is in the way at `uds`.
    #[error("vsock uds {0}: exists and is not a Unix socket; pick another path or remove it")]
    NotASocket(PathBuf),
    /// Binding the host socket failed.
    #[error(
        "vsock uds {path}: cannot listen: {source} (does the directory exist and is it writable?)"
    )]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A virtio-vsock device whose host side is the Unix socket `uds`.
pub struct Vsock {
    // Identity and host socket, kept across resets.
    cid: u64,
    uds: PathBuf,
    listener: Arc<UnixListener>,
    // Negotiation state.
    acked_features: u64,
    // Running state.
    worker: Option<DeviceWorker>,
    /// Whether the device was activated before: a re-activation announces a transport reset.
    activated_before: bool,
}

impl Vsock {
    /// Listen on `spec.uds` (a stale socket file from an earlier run is replaced).
    pub fn new(spec: &VsockSpec) -> Result<Self, VsockError> {
        if let Ok(meta) = std::fs::symlink_metadata(&spec.uds) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket(spec.uds.clone()));
            }
            let _ = std::fs::remove_file(&spec.uds);
        }
        let bind_err = |source| VsockError::Bind {
            path: spec.uds.clone(),
            source,
        };
        let listener = UnixListener::bind(&spec.uds).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        tracing::info!(cid = spec.cid, uds = %spec.uds.display(), "virtio-vsock listening");
        Ok(Vsock {
            cid: spec.cid,
            uds: spec.uds.clone(),
            listener: Arc::new(listener),
            acked_features: 0,
            worker: None,
            activated_before: false,
        })
    }

    /// The guest's CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }
}

fn offered_features() -> u64 {
    1u64 << VIRTIO_F_VERSION_1
        | 1u64 << VIRTIO_RING_F_EVENT_IDX
        | 1u64 << VIRTIO_RING_F_INDIRECT_DESC
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        offered_features()
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & offered_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::queue::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActivatedQueue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let event_idx = self.acked_features & 1u64 << VIRTIO_RING_F_EVENT_IDX != 0;
        let queues: [DeviceQueue; 3] = queues
            .into_iter()
            .map(|q| DeviceQueue::new(q, event_idx))
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| ActivateError::QueueCount { expected: 3, got })?;
        let muxer = Muxer::new(self.cid, self.uds.clone(), self.listener.clone());
        let handler =
            VsockHandler::new(mem, interrupt.clone(), queues, muxer, self.activated_before);
        let worker = DeviceWorker::spawn("virtio-vsock", handler, interrupt)
            .map_err(|e| ActivateError::Backend(format!("cannot start the vsock worker: {e}")))?;
        self.worker = Some(worker);
        self.activated_before = true;
        Ok(())
    }

    fn reset(&mut self) {
        // Stopping the worker drops the muxer: every host stream is closed.
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        self.acked_features = 0;
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod tests;
