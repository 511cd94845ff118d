//! The net worker: frames from the backend into the rx queue, tx queue frames out to the
//! backend. When the guest has no rx buffers the backend is not polled (the frame waits in the
//! kernel's TAP queue, which applies backpressure) until the guest posts more.

use std::io::ErrorKind;
use std::sync::Arc;

use cloudphone_virtio::{DeviceQueue, GuestMemory, VirtioInterrupt, WorkerContext, WorkerHandler};
use vmm_sys_util::epoll::EventSet;

use super::iov::{Gathered, GuestFrame, IovScratch};
use super::rx::{RxBuffers, RxTarget};
use super::{NetBackend, MAX_BUFFER_LEN, VNET_HDR_LEN};

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const BACKEND_TOKEN: u64 = 2;
/// Frames moved per wakeup before yielding to other events (fairness between directions).
const BATCH: usize = 256;

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
    rx_iov: IovScratch,
    rx_bufs: RxBuffers,
    tx_iov: IovScratch,
    backend_polled: bool,
    warn: cloudphone_virtio::log_limit::LogLimit,
}

impl NetHandler {
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        backend: Arc<dyn NetBackend>,
        rx: DeviceQueue,
        tx: DeviceQueue,
        mrg_rxbuf: bool,
        rx_held: Arc<std::sync::atomic::AtomicU16>,
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
            rx_iov: IovScratch::default(),
            rx_bufs: RxBuffers::counted(rx_held),
            tx_iov: IovScratch::default(),
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
            let delivery = match self.rx_pending {
                Some(len) => self.deliver_bounced(len)?,
                None => match self.receive()? {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            match delivery {
                Delivery::Delivered => delivered = true,
                Delivery::Dropped => {}
                Delivery::NoBuffers => break,
            }
        }
        self.set_backend_polling(ctx, self.rx_pending.is_none())?;
        if delivered {
            self.rx.signal_used(&self.mem, self.interrupt.as_ref())?;
        }
        Ok(())
    }

    /// Read the next frame from the backend: straight into the held guest buffers when they can
    /// take any frame, else into the bounce buffer. `None` when no frame is waiting.
    fn receive(&mut self) -> Result<Option<Delivery>, String> {
        let mem = &self.mem;
        // With mergeable buffers a frame may spread over all held chains; without, it must fit
        // the first (a driver without them posts big chains when it accepts TSO).
        let want = if self.mrg_rxbuf { MAX_BUFFER_LEN } else { 1 };
        self.rx_bufs.top_up(mem, &mut self.rx, want)?;
        let direct = if self.mrg_rxbuf {
            self.rx_bufs.capacity() >= MAX_BUFFER_LEN
        } else {
            self.rx_bufs.first_capacity() >= MAX_BUFFER_LEN
        };
        let target = match direct {
            true => self.rx_bufs.target(mem, self.mrg_rxbuf)?,
            false => None,
        };
        let bounced = target.is_none();
        let target = match target {
            Some(target) => target,
            None => RxTarget::host(&mut self.rx_frame, &mut self.rx_iov),
        };
        let len = match self.backend.recv(&target) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(None)
            }
            Err(e) => return Err(format!("reading a frame from the net backend: {e}")),
        };
        // A TAP reports a frame's full length even when it did not fit (it is then cut).
        if !(VNET_HDR_LEN..=target.len()).contains(&len) {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(
                    occurrences,
                    len,
                    room = target.len(),
                    "net backend gave a frame shorter than the vnet header or longer than \
                     any guest frame; dropped"
                );
            }
            return Ok(Some(Delivery::Dropped));
        }
        if bounced {
            self.rx_pending = Some(len);
            return self.deliver_bounced(len).map(Some);
        }
        self.rx_bufs.commit(mem, &mut self.rx, len)?;
        Ok(Some(Delivery::Delivered))
    }

    /// Copy the frame waiting in the bounce buffer (`len` bytes) into guest rx buffers.
    fn deliver_bounced(&mut self, len: usize) -> Result<Delivery, String> {
        let mem = &self.mem;
        let fits = if self.mrg_rxbuf {
            self.rx_bufs.top_up(mem, &mut self.rx, len)?;
            self.rx_bufs.capacity() >= len
        } else {
            self.rx_bufs.top_up(mem, &mut self.rx, 1)?;
            let first = self.rx_bufs.first_capacity();
            if first > 0 && first < len {
                // Without mergeable buffers one chain must hold the frame: drop it, keep the
                // chain for a smaller one.
                self.rx_pending = None;
                if let Some(occurrences) = self.warn.record() {
                    tracing::warn!(
                        occurrences,
                        len,
                        capacity = first,
                        "guest rx buffer too small for frame; frame dropped"
                    );
                }
                return Ok(Delivery::Dropped);
            }
            first >= len
        };
        if !fits {
            // Keep the frame until the guest posts more buffers.
            return Ok(Delivery::NoBuffers);
        }
        self.rx_pending = None;
        self.rx_bufs.copy_in(mem, &self.rx_frame[..len])?;
        self.rx_bufs.commit(mem, &mut self.rx, len)?;
        Ok(Delivery::Delivered)
    }

    /// Send every frame the guest queued for transmission, each straight from guest memory.
    fn process_tx(&mut self) -> Result<(), String> {
        let mem = &self.mem;
        let mut used = false;
        while let Some(chain) = self.tx.pop(mem)? {
            let head = chain.head();
            let gathered =
                GuestFrame::gather(mem, &chain, &mut self.tx_iov, VNET_HDR_LEN, MAX_BUFFER_LEN)?;
            match gathered {
                Gathered::Frame(frame) => {
                    if let Err(e) = self.backend.send(&frame) {
                        // Like a NIC whose wire is busy: the frame is lost, TCP retransmits.
                        tracing::debug!(error = %e, "net backend refused a frame; dropped");
                    }
                }
                Gathered::BadLength(len) => {
                    if let Some(occurrences) = self.warn.record() {
                        tracing::warn!(occurrences, len, "guest sent a frame of invalid length (limits {VNET_HDR_LEN}..={MAX_BUFFER_LEN}); dropped");
                    }
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
