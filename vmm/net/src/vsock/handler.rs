//! The vsock worker: guest tx packets into the muxer, muxer packets into guest rx buffers, and
//! the transport-reset event after re-activation.

use std::io::{Read, Write};
use std::sync::Arc;

use cloudphone_virtio::{DeviceQueue, GuestMemory, VirtioInterrupt, WorkerContext, WorkerHandler};
use vmm_sys_util::epoll::EventSet;

use super::muxer::{Muxer, LISTENER_TOKEN};
use super::packet::{Header, HDR_LEN, MAX_PAYLOAD};

const RX_TOKEN: u64 = 0;
const TX_TOKEN: u64 = 1;
const EVENT_TOKEN: u64 = 2;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: the guest must drop its connections and re-read the CID.
const EVENT_TRANSPORT_RESET: u32 = 0;

pub(super) struct VsockHandler {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    rx: DeviceQueue,
    tx: DeviceQueue,
    event: DeviceQueue,
    muxer: Muxer,
    buf: Vec<u8>,
    /// A transport-reset event waits for an event-queue buffer.
    reset_event_pending: bool,
    /// Guest tx processing paused because the guest is not taking our replies.
    tx_stalled: bool,
    warn: cloudphone_virtio::log_limit::LogLimit,
}

impl VsockHandler {
    pub fn new(
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        [rx, tx, event]: [DeviceQueue; 3],
        muxer: Muxer,
        send_reset_event: bool,
    ) -> Self {
        VsockHandler {
            mem,
            interrupt,
            rx,
            tx,
            event,
            muxer,
            buf: vec![0; MAX_PAYLOAD],
            reset_event_pending: send_reset_event,
            tx_stalled: false,
            warn: Default::default(),
        }
    }

    /// Move packets both ways until nothing more can move.
    fn pump(&mut self, ctx: &WorkerContext) -> Result<(), String> {
        loop {
            self.process_tx(ctx)?;
            let delivered = self.process_rx(ctx)?;
            if !(self.tx_stalled && delivered) {
                return Ok(());
            }
        }
    }

    /// Handle guest packets until the tx queue is empty or our reply backlog is full.
    fn process_tx(&mut self, ctx: &WorkerContext) -> Result<(), String> {
        let mem = &self.mem;
        let mut used = false;
        self.tx_stalled = false;
        loop {
            if self.muxer.tx_backlog_full() {
                self.tx_stalled = true;
                break;
            }
            let Some(chain) = self.tx.pop(mem)? else {
                break;
            };
            let head = chain.head();
            let mut reader = chain.reader(mem);
            let available = reader.available_bytes();
            let mut raw = [0u8; HDR_LEN];
            if available < HDR_LEN {
                if let Some(occurrences) = self.warn.record() {
                    tracing::warn!(
                        occurrences,
                        available,
                        "vsock tx packet shorter than its header; dropped"
                    );
                }
            } else {
                reader
                    .read_exact(&mut raw)
                    .map_err(|e| format!("reading vsock tx buffer {head}: {e}"))?;
                let hdr = Header::decode(&raw);
                let len = hdr.len as usize;
                if len > MAX_PAYLOAD || len > available - HDR_LEN {
                    if let Some(occurrences) = self.warn.record() {
                        tracing::warn!(
                            occurrences,
                            len,
                            available,
                            "vsock tx packet length exceeds its buffer or 64 KiB; RST"
                        );
                    }
                    self.muxer.reject(ctx, &hdr);
                } else {
                    reader
                        .read_exact(&mut self.buf[..len])
                        .map_err(|e| format!("reading vsock tx buffer {head}: {e}"))?;
                    self.muxer.guest_packet(ctx, &hdr, &self.buf[..len])?;
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

    /// Fill guest rx buffers with the muxer's packets; returns whether any was delivered.
    fn process_rx(&mut self, ctx: &WorkerContext) -> Result<bool, String> {
        let mem = &self.mem;
        let mut delivered = false;
        while self.muxer.has_rx() {
            let Some(chain) = self.rx.pop(mem)? else {
                break;
            };
            let head = chain.head();
            let mut writer = chain.writer(mem);
            let capacity = writer.available_bytes();
            if capacity < HDR_LEN {
                if let Some(occurrences) = self.warn.record() {
                    tracing::warn!(
                        occurrences,
                        capacity,
                        "vsock rx buffer smaller than a header; returned unused"
                    );
                }
                self.rx.add_used(mem, head, 0)?;
                delivered = true;
                continue;
            }
            let room = (capacity - HDR_LEN).min(MAX_PAYLOAD);
            let Some((hdr, len)) = self.muxer.next_rx(ctx, &mut self.buf[..room])? else {
                self.rx.undo_pop();
                break;
            };
            writer
                .write_all(&hdr.encode())
                .and_then(|()| writer.write_all(&self.buf[..len]))
                .map_err(|e| format!("writing vsock rx buffer {head}: {e}"))?;
            self.rx.add_used(mem, head, (HDR_LEN + len) as u32)?;
            delivered = true;
        }
        if delivered {
            self.rx.signal_used(mem, self.interrupt.as_ref())?;
        }
        Ok(delivered)
    }

    /// Post the transport-reset event once the guest gives an event buffer.
    fn send_reset_event(&mut self) -> Result<(), String> {
        if !self.reset_event_pending {
            return Ok(());
        }
        let mem = &self.mem;
        let Some(chain) = self.event.pop(mem)? else {
            return Ok(());
        };
        let head = chain.head();
        let mut writer = chain.writer(mem);
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let len = if writer.available_bytes() >= event.len() {
            writer
                .write_all(&event)
                .map_err(|e| format!("writing vsock event: {e}"))?;
            event.len() as u32
        } else {
            if let Some(occurrences) = self.warn.record() {
                tracing::warn!(
                    occurrences,
                    "vsock event buffer too small for an event; reset event dropped"
                );
            }
            0
        };
        self.event.add_used(mem, head, len)?;
        self.reset_event_pending = false;
        self.event.signal_used(mem, self.interrupt.as_ref())?;
        Ok(())
    }
}

impl WorkerHandler for VsockHandler {
    fn init(&mut self, ctx: &WorkerContext) -> std::io::Result<()> {
        self.rx.watch(ctx, RX_TOKEN)?;
        self.tx.watch(ctx, TX_TOKEN)?;
        self.event.watch(ctx, EVENT_TOKEN)?;
        self.muxer.register(ctx)?;
        self.send_reset_event().map_err(std::io::Error::other)
    }

    fn handle(&mut self, ctx: &WorkerContext, token: u64, events: EventSet) -> Result<(), String> {
        match token {
            RX_TOKEN => self.rx.ack_notify(),
            TX_TOKEN => self.tx.ack_notify(),
            EVENT_TOKEN => {
                self.event.ack_notify();
                return self.send_reset_event();
            }
            _ if token >= LISTENER_TOKEN => self.muxer.host_event(ctx, token, events)?,
            other => return Err(format!("vsock worker: unknown event token {other}")),
        }
        self.pump(ctx)
    }
}
