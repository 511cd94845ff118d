//! The net worker: frames from the backend into the rx queue, tx queue frames out to the
//! backend. When the guest has no rx buffers the backend is not polled (the frame waits in the
//! kernel's TAP queue, which applies backpressure) until the guest posts more.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use cloudphone_virtio::{GuestMemory, VirtioInterrupt, WorkerContext, WorkerHandler};
use virtio_queue::{Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::{NetBackend, MAX_BUFFER_LEN, VNET_HDR_LEN};
use crate::queue::DeviceQueue;

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const BACKEND_TOKEN: u64 = 2;
/// Frames moved per wakeup before yielding to other events (fairness between directions).
const BATCH: usize = 256;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// What happened to a received frame.
enum Delivery {
    /// Written into the guest's rx buffers.
    Delivered,
    /// Did not fit the guest's buffer (without mergeable buffers); discarded.
    Dropped,
    /// The guest has no (or not enough) rx buffers; keep the frame for later.
    NoBuffers,
}

pub(super) struct NetHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    backend: Arc<dyn NetBackend>,
    rx: DeviceQueue,
    tx: DeviceQueue,
    mrg_rxbuf: bool,
    /// A frame read from the backend (its length in `rx_frame`) waiting for guest buffers.
    rx_pending: Option<usize>,
    rx_frame: Vec<u8>,
    tx_frame: Vec<u8>,
    backend_polled: bool,
    warn: crate::warn_limit::WarnLimit,
}

impl NetHandler {
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: Arc<dyn NetBackend>,
        rx: DeviceQueue,
        tx: DeviceQueue,
        mrg_rxbuf: bool,
    ) -> Self {
        NetHandler {
            mem,
            interrupt,
            backend,
            rx,
            tx,
            mrg_rxbuf,
            rx_pending: None,
            rx_frame: vec![0; MAX_BUFFER_LEN],
            tx_frame: vec![0; MAX_BUFFER_LEN],
            backend_polled: false,
            warn: Default::default(),
        }
    }

    fn set_backend_polling(&mut self, ctx: &WorkerContext, on: bool) -> Result<(), String> {
        if on == self.backend_polled {
            return Ok(());
        }
        let fd = self.backend.fd();
        let result = if on {
            ctx.add(fd, EventSet::IN, BACKEND_TOKEN)
        } else {
            ctx.remove(fd)
        };
        result.map_err(|e| format!("cannot change polling of the net backend: {e}"))?;
        self.backend_polled = on;
        Ok(())
    }

    /// Move frames from the backend to the guest until either runs dry (or a batch is done).
    fn process_rx(&mut self, ctx: &WorkerContext) -> Result<(), String> {
        let mut delivered = false;
        for _ in 0..BATCH {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.recv(&mut self.rx_frame) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("reading a frame from the net backend: {e}")),
                },
            };
            self.rx_pending = Some(len);
            if len < VNET_HDR_LEN {
                if self.warn.allow() {
                    tracing::warn!(
                        occurrences = self.warn.count(),
                        len,
                        "net backend gave a frame shorter than the vnet header; dropped"
                    );
                }
                self.rx_pending = None;
                continue;
            }
            match self.deliver(len)? {
                Delivery::Delivered => delivered = true,
                Delivery::Dropped => {}
                Delivery::NoBuffers => break,
            }
            self.rx_pending = None;
        }
        self.set_backend_polling(ctx, self.rx_pending.is_none())?;
        if delivered {
            self.rx.signal_used(&self.mem, self.interrupt.as_ref())?;
        }
        Ok(())
    }

    /// Write the frame in `rx_frame[..len]` into guest rx buffers.
    fn deliver(&mut self, len: usize) -> Result<Delivery, String> {
        let mem = &self.mem;
        let mut chains = Vec::new();
        let mut capacity = 0usize;
        while capacity < len {
            let Some(chain) = self.rx.pop_chain(mem)? else {
                // Not enough buffers yet: give back what was taken and wait for the guest.
                self.rx.undo_pop(chains.len());
                return Ok(Delivery::NoBuffers);
            };
            let head = chain.head_index();
            let writer = Writer::new(mem, chain)
                .map_err(|e| format!("rx buffer {head} is outside guest memory: {e}"))?;
            capacity = capacity.saturating_add(writer.available_bytes());
            chains.push((head, writer));
            if !self.mrg_rxbuf {
                break;
            }
        }
        if capacity < len {
            // Without mergeable buffers one chain must hold the frame; leave it for a smaller one.
            self.rx.undo_pop(1);
            if self.warn.allow() {
                tracing::warn!(
                    occurrences = self.warn.count(),
                    len,
                    capacity,
                    "guest rx buffer too small for frame; frame dropped"
                );
            }
            return Ok(Delivery::Dropped);
        }
        let num_buffers = u16::try_from(chains.len()).map_err(|_| "too many rx buffers")?;
        self.rx_frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
        let mut offset = 0;
        for (head, mut writer) in chains {
            let n = writer.available_bytes().min(len - offset);
            writer
                .write_all(&self.rx_frame[offset..offset + n])
                .map_err(|e| format!("writing rx buffer {head}: {e}"))?;
            offset += n;
            self.rx.add_used(mem, head, n as u32)?;
        }
        Ok(Delivery::Delivered)
    }

    /// Send every frame the guest queued for transmission.
    fn process_tx(&mut self) -> Result<(), String> {
        let mem = &self.mem;
        let mut used = false;
        while let Some(chain) = self.tx.pop_chain(mem)? {
            let head = chain.head_index();
            let mut reader = Reader::new(mem, chain)
                .map_err(|e| format!("tx buffer {head} is outside guest memory: {e}"))?;
            let len = reader.available_bytes();
            if !(VNET_HDR_LEN..=MAX_BUFFER_LEN).contains(&len) {
                if self.warn.allow() {
                    tracing::warn!(occurrences = self.warn.count(), len, "guest sent a frame of invalid length (limits {VNET_HDR_LEN}..={MAX_BUFFER_LEN}); dropped");
                }
            } else {
                reader
                    .read_exact(&mut self.tx_frame[..len])
                    .map_err(|e| format!("reading tx buffer {head}: {e}"))?;
                if let Err(e) = self.backend.send(&self.tx_frame[..len]) {
                    // Like a NIC whose wire is busy: the frame is lost, TCP retransmits.
                    tracing::debug!(error = %e, "net backend refused a frame; dropped");
                }
            }
            self.tx.add_used(mem, head, 0)?;
            used = true;
        }
        if used {
            self.tx.signal_used(mem, self.interrupt.as_ref())?;
        }
        Ok(())
    }
}

impl WorkerHandler for NetHandler {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        self.rx.watch(ctx, RX_TOKEN)?;
        self.tx.watch(ctx, TX_TOKEN)?;
        ctx.add(self.backend.fd(), EventSet::IN, BACKEND_TOKEN)?;
        self.backend_polled = true;
        Ok(())
    }

    fn handle(&mut self, ctx: &WorkerContext, token: u64, _events: EventSet) -> Result<(), String> {
        match token {
            RX_TOKEN => {
                self.rx.ack_notify();
                self.process_rx(ctx)
            }
            TX_TOKEN => {
                self.tx.ack_notify();
                self.process_tx()
            }
            BACKEND_TOKEN => self.process_rx(ctx),
            other => Err(format!("net worker: unknown event token {other}")),
        }
    }
}
