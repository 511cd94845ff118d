//! virtio-net: a phone's Ethernet interface, backed by a host TAP device.

mod handler;
mod iov;
mod rx;
mod spec;
mod tap;

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use cloudphone_virtio::{
    read_config_bytes, ActivateError, Activation, DeviceStateBlob, StateError, VirtioCommon,
    VirtioDevice, WorkerHandler,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub use iov::GuestFrame;
pub use rx::RxTarget;
pub use spec::{NetSpec, NetSpecError};
pub use tap::{NetBackend, Tap};

use crate::mac::MacAddr;
use handler::NetHandler;

/// Size of `virtio_net_hdr_v1` (with `num_buffers`), used on both the guest and TAP side.
pub(crate) const VNET_HDR_LEN: usize = 12;
/// Largest frame we move, header excluded: a 64 KiB GSO packet plus Ethernet and VLAN headers.
/// Anything longer from the guest is dropped; it bounds the per-device bounce buffers.
pub(crate) const MAX_FRAME_LEN: usize = 65550;
/// Largest buffer (header + frame) either direction.
pub(crate) const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Descriptors per queue (rx and tx).
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// Config space: mac[6], status (u16 LE).
const CONFIG_LEN: usize = 8;

/// Why a net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// /dev/net/tun is missing or not accessible.
    #[error("cannot open /dev/net/tun: {0} (load the tun module and run with CAP_NET_ADMIN or as the tap's owner)")]
    OpenTun(#[source] io::Error),
    /// A TAP ioctl failed.
    #[error("TAP {tap}: {op} failed: {source}")]
    Tap {
        tap: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Feature bits offered: checksum and TSO offload both ways (the TAP does the work), mergeable
/// rx buffers, MAC and link status in config space. No UFO, no control queue, one queue pair.
fn offered_features() -> u64 {
    [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_ECN,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_F_VERSION_1,
    ]
    .iter()
    .fold(0, |acc, bit| acc | 1u64 << bit)
}

/// A virtio-net device (virtio spec 5.1) with one rx/tx queue pair.
pub struct Net {
    // Identity and backend, kept across resets.
    backend: Arc<dyn NetBackend>,
    mac: MacAddr,
    // Negotiation and running state.
    common: VirtioCommon,
    /// Receive chains the worker holds (popped, waiting for a frame): a snapshot hands them
    /// back to the ring so the restored device takes them again.
    rx_held: Arc<AtomicU16>,
}

impl Net {
    /// A device on the TAP named by `spec`, with its MAC (given or derived from the tap name).
    pub fn new(spec: &NetSpec) -> Result<Self, NetError> {
        let tap = Tap::open(&spec.tap)?;
        tracing::info!(tap = tap.name(), mac = %spec.mac_or_derived(), "virtio-net on TAP");
        Ok(Self::with_backend(Arc::new(tap), spec.mac_or_derived()))
    }

    /// A device on any frame backend (tests use a socket pair).
    pub fn with_backend(backend: Arc<dyn NetBackend>, mac: MacAddr) -> Self {
        Net {
            backend,
            mac,
            common: VirtioCommon::new(
                virtio_bindings::virtio_ids::VIRTIO_ID_NET,
                &QUEUE_SIZES,
                offered_features(),
            ),
            rx_held: Arc::default(),
        }
    }

    /// The MAC address the guest sees.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config
    }
}

impl VirtioDevice for Net {
    cloudphone_virtio::virtio_common!(common);

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn worker_name(&self) -> &str {
        "virtio-net"
    }

    fn worker(&mut self, a: Activation) -> Result<Box<dyn WorkerHandler>, ActivateError> {
        let [rx, tx] = Activation::queue_array(a.queues)?;
        self.backend
            .set_offload(self.common.acked_features())
            .map_err(|e| ActivateError::Backend(format!("cannot set TAP offloads: {e}")))?;
        Ok(Box::new(NetHandler::new(
            a.mem,
            a.interrupt,
            self.backend.clone(),
            rx,
            tx,
            self.common.has_feature(VIRTIO_NET_F_MRG_RXBUF),
            self.rx_held.clone(),
        )))
    }

    /// Common state only, with the receive queue rewound over the chains the worker holds
    /// (they are always the newest ones popped and never used yet), so the restored device
    /// pops them again instead of the guest losing those buffers. A frame read from the TAP
    /// but not yet delivered is dropped, as on a real link.
    fn save_state(&self) -> Result<DeviceStateBlob, StateError> {
        let mut blob = self.common.save_blob(None);
        let held = self.rx_held.load(Ordering::Acquire);
        if let Some(rx) = blob.common.queues.iter_mut().find(|q| q.index == 0) {
            rx.next_avail = rx.next_avail.wrapping_sub(held);
        }
        Ok(blob)
    }
}

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod tests;
