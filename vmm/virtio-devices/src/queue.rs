//! Guest-hostile descriptor chain handling shared by devices: validate a chain before use,
//! and drain a queue with notification suppression (EVENT_IDX) done right.
//!
//! `virtio-queue` stops iterating silently when a chain loops, is longer than the queue,
//! points outside guest memory or exceeds 4 GiB; [`read_chain`] turns each of those into a
//! [`ChainError`] so the device can flag DEVICE_NEEDS_RESET instead of half-processing.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::{GuestMemory, InterruptCause, VirtioInterrupt};

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

/// Walk `chain` fully and validate it: returns its descriptors (readable ones first) or why
/// it must be refused. The result is bounded by the queue size (or indirect table size).
pub fn read_chain<M>(
    chain: DescriptorChain<M>,
    mem: &GuestMemory,
) -> Result<Vec<Descriptor>, ChainError>
where
    M: Deref<Target = GuestMemory>,
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

/// Pop every available chain, let `handle` process it (returning the bytes it wrote into
/// the chain's writable buffers), and put it in the used ring. With EVENT_IDX the avail
/// event is re-armed and the ring re-checked, so no notification is lost. Interrupts the
/// guest (queue `index`) once at the end if the driver wants it.
///
/// An `Err` from `handle` or the queue stops processing: the caller returns it from its
/// [`WorkerHandler`](crate::WorkerHandler), which marks the device DEVICE_NEEDS_RESET.
pub fn drain_queue<F>(
    index: u16,
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    mut handle: F,
) -> Result<(), String>
where
    F: FnMut(u16, Vec<Descriptor>) -> Result<u32, String>,
{
    let err = |what: &str, e: virtio_queue::Error| format!("queue {index}: {what}: {e}");
    let mut used_any = false;
    loop {
        queue
            .disable_notification(mem)
            .map_err(|e| err("disabling notifications", e))?;
        while let Some(chain) = next_chain(index, queue, mem)? {
            let head = chain.head_index();
            let descs = read_chain(chain, mem).map_err(|e| format!("queue {index}: {e}"))?;
            let written = handle(head, descs)?;
            queue
                .add_used(mem, head, written)
                .map_err(|e| err("adding a used element", e))?;
            used_any = true;
        }
        let more = queue
            .enable_notification(mem)
            .map_err(|e| err("re-enabling notifications", e))?;
        if !more {
            break;
        }
    }
    if used_any
        && queue
            .needs_notification(mem)
            .map_err(|e| err("reading used_event", e))?
    {
        interrupt
            .trigger(InterruptCause::Queue(index))
            .map_err(|e| format!("queue {index}: interrupt failed: {e}"))?;
    }
    Ok(())
}

/// The next available chain. Unlike `Queue::pop_descriptor_chain`, a driver that moved the
/// available index more than a queue size ahead is an error: silently treating it as "empty"
/// while `enable_notification` keeps reporting new buffers would spin the worker forever.
fn next_chain<'m>(
    index: u16,
    queue: &mut Queue,
    mem: &'m GuestMemory,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, String> {
    let mut avail = queue
        .iter(mem)
        .map_err(|e| format!("queue {index}: available ring: {e}"))?;
    Ok(avail.next())
}

/// Pop the next available chain and validate it; None when the ring is empty (notifications
/// are re-armed first, so the driver's next buffer wakes the device).
pub fn pop_chain(
    index: u16,
    queue: &mut Queue,
    mem: &GuestMemory,
) -> Result<Option<(u16, Vec<Descriptor>)>, String> {
    loop {
        if let Some(chain) = next_chain(index, queue, mem)? {
            let head = chain.head_index();
            let descs = read_chain(chain, mem).map_err(|e| format!("queue {index}: {e}"))?;
            return Ok(Some((head, descs)));
        }
        let more = queue
            .enable_notification(mem)
            .map_err(|e| format!("queue {index}: re-enabling notifications: {e}"))?;
        if !more {
            return Ok(None);
        }
    }
}

/// Return chain `head` to the driver with `len` bytes written, interrupting the guest if it
/// asked to be (EVENT_IDX aware).
pub fn complete_chain(
    index: u16,
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    head: u16,
    len: u32,
) -> Result<(), String> {
    queue
        .add_used(mem, head, len)
        .map_err(|e| format!("queue {index}: adding a used element: {e}"))?;
    if queue
        .needs_notification(mem)
        .map_err(|e| format!("queue {index}: reading used_event: {e}"))?
    {
        interrupt
            .trigger(InterruptCause::Queue(index))
            .map_err(|e| format!("queue {index}: interrupt failed: {e}"))?;
    }
    Ok(())
}

/// Append the device-readable bytes of `descs` to `out`, at most `limit` bytes; returns how
/// many bytes the chain offered in total (so callers can report truncation).
pub fn gather(
    mem: &GuestMemory,
    descs: &[Descriptor],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<u64, String> {
    let mut offered = 0u64;
    for d in descs.iter().filter(|d| !d.is_write_only()) {
        offered += u64::from(d.len());
        let room = limit.saturating_sub(out.len()).min(d.len() as usize);
        if room == 0 {
            continue;
        }
        let start = out.len();
        out.resize(start + room, 0);
        mem.read_slice(&mut out[start..], d.addr())
            .map_err(|e| format!("reading guest buffer {:#x}: {e}", d.addr().0))?;
    }
    Ok(offered)
}

/// Write `data` into the device-writable buffers of `descs`; returns the bytes written
/// (less than `data.len()` when the buffers are smaller).
pub fn scatter(mem: &GuestMemory, descs: &[Descriptor], data: &[u8]) -> Result<u32, String> {
    let mut done = 0usize;
    for d in descs.iter().filter(|d| d.is_write_only()) {
        let n = (d.len() as usize).min(data.len() - done);
        if n == 0 {
            break;
        }
        mem.write_slice(&data[done..done + n], d.addr())
            .map_err(|e| format!("writing guest buffer {:#x}: {e}", d.addr().0))?;
        done += n;
    }
    Ok(done as u32)
}

/// Total size of the device-writable buffers of `descs`.
pub fn writable_len(descs: &[Descriptor]) -> u64 {
    descs
        .iter()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn chain_result(descs: &[Descriptor]) -> Result<Vec<Descriptor>, ChainError> {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let raw: Vec<RawDescriptor> = descs.iter().map(|d| RawDescriptor::from(*d)).collect();
        vq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        read_chain(chain, &m)
    }

    #[test]
    fn valid_chain() {
        let d = chain_result(&[
            Descriptor::new(0x8000, 16, NEXT, 1),
            Descriptor::new(0x9000, 32, WRITE, 0),
        ])
        .unwrap();
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn outside_memory_is_refused() {
        let e = chain_result(&[Descriptor::new(0x10_0000 - 8, 16, WRITE, 0)]).unwrap_err();
        assert!(matches!(e, ChainError::OutOfMemory { .. }));
        let e = chain_result(&[Descriptor::new(u64::MAX - 4, 16, 0, 0)]).unwrap_err();
        assert!(matches!(e, ChainError::OutOfMemory { .. }));
    }

    #[test]
    fn readable_after_writable_is_refused() {
        let e = chain_result(&[
            Descriptor::new(0x8000, 16, WRITE | NEXT, 1),
            Descriptor::new(0x9000, 16, 0, 0),
        ])
        .unwrap_err();
        assert!(matches!(e, ChainError::Order { .. }));
    }

    #[test]
    fn loop_is_refused() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 4);
        // 0 -> 1 -> 0 -> ...: build_desc_chain links sequentially, so patch the last link.
        vq.build_desc_chain(&[
            RawDescriptor::from(Descriptor::new(0x8000, 16, NEXT, 1)),
            RawDescriptor::from(Descriptor::new(0x9000, 16, NEXT, 0)),
        ])
        .unwrap();
        let mut last = Descriptor::from(vq.desc_table().load(1).unwrap());
        last.set_flags(NEXT);
        last.set_next(0);
        vq.desc_table().store(1, RawDescriptor::from(last)).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        assert_eq!(
            read_chain(chain, &m).unwrap_err(),
            ChainError::Truncated { head: 0 }
        );
    }

    /// Regression (found by the fuzz test below): an available index more than a queue size
    /// ahead made `pop_descriptor_chain` return None while `enable_notification` kept saying
    /// "more", spinning the worker forever.
    #[test]
    fn runaway_avail_index_is_an_error_not_a_hang() {
        use crate::test_util::{memory_with, queue, HostileRing, RecordingInterrupt, QUEUE_SIZE};
        let ring = HostileRing {
            descs: Vec::new(),
            heads: Vec::new(),
            avail_idx: QUEUE_SIZE + 5,
        };
        let mem = memory_with(&ring);
        let irq = RecordingInterrupt::default();
        let err = drain_queue(0, &mut queue(false), &mem, &irq, |_, _| Ok(0)).unwrap_err();
        assert!(err.contains("available ring"), "{err}");
        assert!(pop_chain(0, &mut queue(true), &mem).is_err());
    }

    #[test]
    fn fuzz_drain_queue_hostile_rings() {
        use crate::test_util::{
            arb_ring, fuzz, memory_with, queue, used_idx, RecordingInterrupt, MEM_SIZE,
        };
        use proptest::prelude::*;
        fuzz(
            "drain_queue",
            3000,
            (arb_ring(), any::<bool>()),
            |(ring, event_idx)| {
                let mem = memory_with(&ring);
                let mut q = queue(event_idx);
                let irq = RecordingInterrupt::default();
                let mut chains = 0u16;
                let result = drain_queue(0, &mut q, &mem, &irq, |_, descs| {
                    for d in &descs {
                        let end = d.addr().0.checked_add(u64::from(d.len()));
                        assert!(d.len() == 0 || end.is_some_and(|e| e <= MEM_SIZE), "{d:?}");
                    }
                    let mut out = Vec::new();
                    gather(&mem, &descs, 4096, &mut out)?;
                    chains += 1;
                    scatter(&mem, &descs, &[0xab; 300])
                });
                if result.is_ok() {
                    prop_assert_eq!(used_idx(&mem), chains);
                }
                Ok(())
            },
        );
    }
}
