//! [`DeviceQueue`]: the one way every device uses a virtqueue.
//!
//! The guest is not trusted, so every chain is validated before the device sees it
//! ([`Chain`]): `virtio-queue` stops iterating silently when a chain loops, is longer than the
//! queue, points outside guest memory or exceeds 4 GiB, and a driver may move the available
//! index more than a queue size ahead; each of those becomes a [`QueueError`] the worker
//! returns, so the device flags DEVICE_NEEDS_RESET instead of half-processing or spinning.
//! Used entries may be published in batches and the guest is interrupted once per batch,
//! only when it asked to be (`VIRTIO_RING_F_EVENT_IDX`, virtio 2.7.10).

use std::collections::VecDeque;
use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::{ActivatedQueue, GuestMemory, InterruptCause, VirtioInterrupt, WorkerContext};

/// `struct virtq_avail`: flags and idx before the ring entries (virtio 2.7.6).
const AVAIL_RING_HEADER_LEN: u64 = 4;
/// `struct virtq_used`: flags and idx before the ring entries (virtio 2.7.8).
const USED_RING_HEADER_LEN: u64 = 4;
/// `struct virtq_used_elem`: id (u32) and len (u32).
const USED_ELEM_LEN: u64 = 8;

/// A descriptor chain the device must refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// The chain has no readable descriptor at its head (bad indirect table, bad address).
    #[error("descriptor chain {head} is empty or its first descriptor is unreadable")]
    Empty { head: u16 },
    /// The chain loops, is longer than the queue, has a next index outside the table, or
    /// totals more than 4 GiB.
    #[error("descriptor chain {head} is truncated (loop, too many descriptors, bad next index or > 4 GiB)")]
    Truncated { head: u16 },
    /// A device-readable descriptor follows a device-writable one (virtio spec 2.7.4.2).
    #[error("descriptor chain {head}: readable descriptor after a writable one")]
    Order { head: u16 },
    /// A buffer is not entirely inside guest memory.
    #[error("descriptor chain {head}: buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory { head: u16, addr: u64, len: u32 },
}

/// Why a queue operation failed: the driver broke the ring protocol (or guest memory did),
/// so the device stops and flags DEVICE_NEEDS_RESET.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A popped chain failed validation.
    #[error("queue {queue}: {source}")]
    Chain {
        queue: u16,
        #[source]
        source: ChainError,
    },
    /// The ring itself could not be read or written (runaway available index, bad address).
    #[error("queue {queue}: {what}: {source}")]
    Ring {
        queue: u16,
        what: &'static str,
        #[source]
        source: virtio_queue::Error,
    },
    /// Guest memory behind a ring or buffer could not be accessed.
    #[error("queue {queue}: {what}: {source}")]
    Memory {
        queue: u16,
        what: &'static str,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The device tried to return a head that is not a ring slot.
    #[error("queue {queue}: used buffer {head} is outside the {size}-entry ring")]
    UsedHead { queue: u16, head: u16, size: u16 },
    /// The transport could not raise the queue's interrupt.
    #[error("queue {queue}: cannot interrupt the guest: {source}")]
    Interrupt {
        queue: u16,
        #[source]
        source: std::io::Error,
    },
}

/// Workers report failures as strings ([`crate::WorkerHandler::handle`]); this keeps `?` usable
/// on queue operations there.
impl From<QueueError> for String {
    fn from(e: QueueError) -> Self {
        e.to_string()
    }
}

/// Walk `chain` fully and validate it: returns its descriptors (readable ones first) or why
/// it must be refused. The result is bounded by the queue size (or indirect table size).
fn read_chain<M>(
    chain: virtio_queue::DescriptorChain<M>,
    mem: &GuestMemory,
) -> Result<Vec<Descriptor>, ChainError>
where
    M: std::ops::Deref<Target = GuestMemory>,
{
    let head = chain.head_index();
    let descs: Vec<Descriptor> = chain.collect();
    let last = descs.last().ok_or(ChainError::Empty { head })?;
    if last.has_next() {
        return Err(ChainError::Truncated { head });
    }
    let mut seen_writable = false;
    for d in &descs {
        if d.is_write_only() {
            seen_writable = true;
        } else if seen_writable {
            return Err(ChainError::Order { head });
        }
        let inside =
            d.len() == 0 || GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize);
        if !inside {
            return Err(ChainError::OutOfMemory {
                head,
                addr: d.addr().0,
                len: d.len(),
            });
        }
    }
    Ok(descs)
}

/// Turn a ring access failure on `queue` into a [`QueueError`] saying what was done.
fn ring_error(queue: u16, what: &'static str) -> impl FnOnce(virtio_queue::Error) -> QueueError {
    move |source| QueueError::Ring {
        queue,
        what,
        source,
    }
}

/// A validated descriptor chain: it ends, holds readable buffers before writable ones, and
/// every buffer lies inside guest memory. Devices read and write it only through this.
#[derive(Debug)]
pub struct Chain {
    head: u16,
    descs: Vec<Descriptor>,
}

impl Chain {
    /// The head index, which is what goes back in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// All descriptors, device-readable ones first.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descs
    }

    /// The device-readable buffers (what the driver sends).
    pub fn readable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descs.iter().filter(|d| !d.is_write_only())
    }

    /// The device-writable buffers (where the device answers).
    pub fn writable(&self) -> impl Iterator<Item = &Descriptor> {
        self.descs.iter().filter(|d| d.is_write_only())
    }

    /// The readable buffers as one byte stream.
    pub fn reader<'m>(&self, mem: &'m GuestMemory) -> ChainReader<'m> {
        ChainReader(Segments::new(mem, self.readable()))
    }

    /// The writable buffers as one byte stream.
    pub fn writer<'m>(&self, mem: &'m GuestMemory) -> ChainWriter<'m> {
        ChainWriter(Segments::new(mem, self.writable()))
    }

    /// Append the readable bytes to `out`, at most `limit` bytes; returns how many bytes the
    /// chain offered in total (so callers can report truncation).
    pub fn gather(
        &self,
        mem: &GuestMemory,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> Result<u64, String> {
        let mut reader = self.reader(mem);
        let offered = reader.available_bytes() as u64;
        let start = out.len();
        let room = limit.saturating_sub(start).min(reader.available_bytes());
        out.resize(start + room, 0);
        std::io::Read::read_exact(&mut reader, &mut out[start..])
            .map_err(|e| format!("reading chain {}: {e}", self.head))?;
        Ok(offered)
    }

    /// Write `data` into the writable buffers; returns the bytes written (less than
    /// `data.len()` when the buffers are smaller).
    pub fn scatter(&self, mem: &GuestMemory, data: &[u8]) -> Result<u32, String> {
        let mut writer = self.writer(mem);
        let n = writer.available_bytes().min(data.len());
        std::io::Write::write_all(&mut writer, &data[..n])
            .map_err(|e| format!("writing chain {}: {e}", self.head))?;
        Ok(n as u32)
    }
}

/// Guest buffers taken as one stream, consumed from the front.
struct Segments<'m> {
    mem: &'m GuestMemory,
    segments: VecDeque<(GuestAddress, usize)>,
    available: usize,
}

impl<'m> Segments<'m> {
    fn new<'d>(mem: &'m GuestMemory, descs: impl Iterator<Item = &'d Descriptor>) -> Self {
        let segments: VecDeque<_> = descs
            .filter(|d| d.len() > 0)
            .map(|d| (d.addr(), d.len() as usize))
            .collect();
        let available = segments.iter().map(|&(_, len)| len).sum();
        Self {
            mem,
            segments,
            available,
        }
    }

    /// Run `op` on the next piece (at most `len` bytes) of the stream and consume it.
    fn step(
        &mut self,
        len: usize,
        op: impl FnOnce(&GuestMemory, GuestAddress, usize) -> Result<(), vm_memory::GuestMemoryError>,
    ) -> std::io::Result<usize> {
        let Some(front) = self.segments.front_mut() else {
            return Ok(0);
        };
        let n = front.1.min(len);
        op(self.mem, front.0, n).map_err(std::io::Error::other)?;
        front.0 = GuestAddress(front.0 .0 + n as u64);
        front.1 -= n;
        if front.1 == 0 {
            self.segments.pop_front();
        }
        self.available -= n;
        Ok(n)
    }
}

/// Reads the device-readable buffers of a [`Chain`] in order.
pub struct ChainReader<'m>(Segments<'m>);

impl ChainReader<'_> {
    /// Bytes left to read.
    pub fn available_bytes(&self) -> usize {
        self.0.available
    }

    /// Read one plain-data object (a request header) from the stream.
    pub fn read_obj<T: ByteValued + Default>(&mut self) -> std::io::Result<T> {
        let mut obj = T::default();
        std::io::Read::read_exact(self, obj.as_mut_slice())?;
        Ok(obj)
    }
}

impl std::io::Read for ChainReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let len = buf.len();
        self.0
            .step(len, |mem, addr, n| mem.read_slice(&mut buf[..n], addr))
    }
}

/// Writes into the device-writable buffers of a [`Chain`] in order.
pub struct ChainWriter<'m>(Segments<'m>);

impl ChainWriter<'_> {
    /// Bytes the buffers can still take.
    pub fn available_bytes(&self) -> usize {
        self.0.available
    }
}

impl std::io::Write for ChainWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .step(buf.len(), |mem, addr, n| mem.write_slice(&buf[..n], addr))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything needed to put a queue back after a snapshot: the ring layout the driver
/// programmed and how far the device got in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// Queue index within the device.
    pub index: u16,
    /// Ring size the driver chose.
    pub size: u16,
    /// Whether the driver enabled the queue.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available (driver) ring.
    pub avail_ring: u64,
    /// Guest address of the used (device) ring.
    pub used_ring: u64,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// Whether VIRTIO_RING_F_EVENT_IDX is in use on this queue.
    pub event_idx: bool,
}

impl QueueState {
    /// Continue where a saved queue stopped: set `queue`'s ring positions to this state's.
    pub fn restore_position(&self, queue: &mut Queue) {
        queue.set_next_avail(self.next_avail);
        queue.set_next_used(self.next_used);
    }
}

/// A queue's layout plus its live ring positions, shared between the worker's
/// [`DeviceQueue`] (which updates the positions) and the device's common part (which saves
/// them) without locking the worker.
#[derive(Debug)]
pub(crate) struct SharedQueueState {
    layout: QueueState,
    next_avail: AtomicU16,
    next_used: AtomicU16,
}

impl SharedQueueState {
    /// The state as of the worker's last queue operation.
    pub(crate) fn snapshot(&self) -> QueueState {
        QueueState {
            next_avail: self.next_avail.load(Ordering::Acquire),
            next_used: self.next_used.load(Ordering::Acquire),
            ..self.layout
        }
    }
}

/// One activated queue as a device worker owns it: validated chains in, used buffers out
/// (singly or batched), and interrupts only when the driver wants them.
pub struct DeviceQueue {
    index: u16,
    queue: Queue,
    notify: EventFd,
    /// `next_used` when the driver was last considered for an interrupt: the used entries
    /// after it are the ones EVENT_IDX's `used_event` is checked against.
    signalled_used: Wrapping<u16>,
    shared: Arc<SharedQueueState>,
}

impl DeviceQueue {
    /// Take over a queue the transport activated (EVENT_IDX as the transport negotiated it).
    pub fn new(activated: ActivatedQueue) -> Self {
        let queue = activated.queue;
        let layout = QueueState {
            index: activated.index,
            size: queue.size(),
            ready: queue.ready(),
            desc_table: queue.desc_table(),
            avail_ring: queue.avail_ring(),
            used_ring: queue.used_ring(),
            next_avail: queue.next_avail(),
            next_used: queue.next_used(),
            event_idx: queue.event_idx_enabled(),
        };
        Self {
            index: activated.index,
            signalled_used: Wrapping(queue.next_used()),
            shared: Arc::new(SharedQueueState {
                layout,
                next_avail: AtomicU16::new(layout.next_avail),
                next_used: AtomicU16::new(layout.next_used),
            }),
            queue,
            notify: activated.notify,
        }
    }

    /// Queue index within the device.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The queue's layout and current positions (what a snapshot saves).
    pub fn state(&self) -> QueueState {
        self.shared.snapshot()
    }

    /// The shared state the device's common part keeps to save this queue.
    pub(crate) fn shared_state(&self) -> Arc<SharedQueueState> {
        self.shared.clone()
    }

    /// Watch this queue's notify eventfd under `token`.
    pub fn watch(&self, ctx: &WorkerContext, token: u64) -> std::io::Result<()> {
        ctx.add(self.notify.as_raw_fd(), EventSet::IN, token)
    }

    /// Consume a pending notification (the driver kicked the queue).
    pub fn ack_notify(&self) {
        // EAGAIN (nothing pending) is fine: the ring is checked either way.
        let _ = self.notify.read();
    }

    fn publish_positions(&self) {
        self.shared
            .next_avail
            .store(self.queue.next_avail(), Ordering::Release);
        self.shared
            .next_used
            .store(self.queue.next_used(), Ordering::Release);
    }

    /// The next available chain, validated; `None` when the driver has posted nothing more.
    /// On `None` the driver is asked to notify us when it adds buffers (with EVENT_IDX this
    /// writes `avail_event`), and the ring is re-checked to close the race with a concurrent
    /// add. Unlike `Queue::pop_descriptor_chain`, an available index more than a queue size
    /// ahead is an error: treating it as "empty" while `enable_notification` keeps reporting
    /// new buffers would spin the worker forever.
    pub fn pop(&mut self, mem: &GuestMemory) -> Result<Option<Chain>, QueueError> {
        loop {
            let next = self
                .queue
                .iter(mem)
                .map_err(ring_error(self.index, "available ring"))?
                .next();
            if let Some(chain) = next {
                self.publish_positions();
                let head = chain.head_index();
                let descs = read_chain(chain, mem).map_err(|source| QueueError::Chain {
                    queue: self.index,
                    source,
                })?;
                return Ok(Some(Chain { head, descs }));
            }
            let more = self
                .queue
                .enable_notification(mem)
                .map_err(ring_error(self.index, "re-enabling notifications"))?;
            if !more {
                return Ok(None);
            }
        }
    }

    /// Put the last popped chain back, to be popped again later (the device could not use
    /// it yet).
    pub fn undo_pop(&mut self) {
        self.queue.go_to_previous_position();
        self.publish_positions();
    }

    /// Return `head` to the driver with `len` bytes written (call
    /// [`signal_used`](Self::signal_used) once the batch is done).
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        self.add_used_batch(mem, &[(head, len)])
    }

    /// Return several chains `(head, bytes written)` as one used-ring update: every element is
    /// written first and the used index moves once, after them. A frame spread over several
    /// mergeable rx buffers must appear whole: a driver that reads `num_buffers` and finds
    /// fewer used buffers than that drops the frame. A bad head publishes nothing.
    pub fn add_used_batch(
        &mut self,
        mem: &GuestMemory,
        used: &[(u16, u32)],
    ) -> Result<(), QueueError> {
        let Some((&(last_head, last_len), rest)) = used.split_last() else {
            return Ok(());
        };
        let size = self.queue.size();
        if let Some(&(head, _)) = used.iter().find(|&&(head, _)| head >= size) {
            return Err(QueueError::UsedHead {
                queue: self.index,
                head,
                size,
            });
        }
        let start = self.queue.next_used();
        for (i, &(head, len)) in rest.iter().enumerate() {
            let slot = u64::from(start.wrapping_add(i as u16) % size);
            let mut elem = [0u8; USED_ELEM_LEN as usize];
            elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
            elem[4..].copy_from_slice(&len.to_le_bytes());
            // The ring lies inside guest memory (checked at activation), so no overflow.
            let addr = self.queue.used_ring() + USED_RING_HEADER_LEN + slot * USED_ELEM_LEN;
            mem.write_slice(&elem, GuestAddress(addr))
                .map_err(|source| QueueError::Memory {
                    queue: self.index,
                    what: "writing a used element",
                    source,
                })?;
        }
        // `add_used` writes the last element, then publishes the index (release ordering, so
        // after the elements written above).
        self.queue
            .set_next_used(start.wrapping_add(rest.len() as u16));
        let result = self
            .queue
            .add_used(mem, last_head, last_len)
            .map_err(ring_error(self.index, "adding a used element"));
        self.publish_positions();
        result
    }

    /// Interrupt the guest if it asked to hear about the buffers used since the last call
    /// (virtio 2.7.10: with EVENT_IDX, when `used_event` lies among them; else whenever any
    /// was used). Returns whether it interrupted.
    pub fn signal_used(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<bool, QueueError> {
        let new = Wrapping(self.queue.next_used());
        let old = std::mem::replace(&mut self.signalled_used, new);
        if new == old {
            return Ok(false);
        }
        let needed = if self.queue.event_idx_enabled() {
            // The used elements and index must be visible before `used_event` is read.
            fence(Ordering::SeqCst);
            // `used_event` follows the available ring's entries; the ring lies inside guest
            // memory (checked at activation), so the address cannot overflow.
            let addr =
                self.queue.avail_ring() + AVAIL_RING_HEADER_LEN + 2 * u64::from(self.queue.size());
            let used_event: u16 =
                mem.read_obj(GuestAddress(addr))
                    .map_err(|source| QueueError::Memory {
                        queue: self.index,
                        what: "reading used_event",
                        source,
                    })?;
            new - Wrapping(u16::from_le(used_event)) - Wrapping(1) < new - old
        } else {
            true
        };
        if needed {
            interrupt
                .trigger(InterruptCause::Queue(self.index))
                .map_err(|source| QueueError::Interrupt {
                    queue: self.index,
                    source,
                })?;
        }
        Ok(needed)
    }

    /// Return one chain and interrupt the guest if it wants to know (one request, one answer).
    pub fn complete(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        self.add_used(mem, head, len)?;
        self.signal_used(mem, interrupt).map(drop)
    }

    /// Pop every available chain, let `handle` process it (returning the bytes it wrote into
    /// the chain's writable buffers), and put it in the used ring; interrupt the guest once at
    /// the end if it wants it. Without EVENT_IDX the driver is told not to notify while the
    /// device works through the ring.
    ///
    /// An `Err` from `handle` or the queue stops processing: the caller returns it from its
    /// [`WorkerHandler`](crate::WorkerHandler), which marks the device DEVICE_NEEDS_RESET.
    pub fn drain<F>(
        &mut self,
        mem: &GuestMemory,
        interrupt: &dyn VirtioInterrupt,
        mut handle: F,
    ) -> Result<(), String>
    where
        F: FnMut(&Chain) -> Result<u32, String>,
    {
        self.queue
            .disable_notification(mem)
            .map_err(ring_error(self.index, "disabling notifications"))?;
        while let Some(chain) = self.pop(mem)? {
            let written = handle(&chain)?;
            self.add_used(mem, chain.head(), written)?;
        }
        self.signal_used(mem, interrupt)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
