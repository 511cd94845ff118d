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
    read_config_bytes, ActivateError, Activation, VirtioCommon, VirtioDevice, WorkerHandler,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub use spec::{VsockSpec, VsockSpecError};

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
    // Negotiation and running state.
    common: VirtioCommon,
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
            common: VirtioCommon::new(VIRTIO_ID_VSOCK, &QUEUE_SIZES, offered_features()),
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
    cloudphone_virtio::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn worker_name(&self) -> &str {
        "virtio-vsock"
    }

    /// Connections cannot survive a snapshot (their host streams belong to the old process),
    /// so only the common state is saved; the restored device announces a transport reset
    /// when it starts, and the guest drops its sockets, as after a Firecracker restore.
    fn restore_state(
        &mut self,
        blob: &cloudphone_virtio::DeviceStateBlob,
    ) -> Result<(), cloudphone_virtio::StateError> {
        self.common.restore_blob(blob)?;
        self.activated_before = true;
        Ok(())
    }

    // Reset stops the worker, which drops its muxer: every host stream is closed.
    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let queues = Activation::queue_array(a.queues)?;
        let muxer = Muxer::new(self.cid, self.uds.clone(), self.listener.clone());
        let handler = VsockHandler::new(a.mem, a.interrupt, queues, muxer, self.activated_before);
        self.activated_before = true;
        Ok(Box::new(handler))
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
