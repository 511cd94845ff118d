use super::*;
use crate::testing::hostile::{
    arb_ring, device_queue, fuzz, memory_with, used_idx, HostileRing, RawDesc, RecordingInterrupt,
    AVAIL, DATA, MEM_SIZE, QUEUE_SIZE, USED,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr,
        len,
        flags,
        next,
    }
}

/// A ring holding one chain (the descriptors from index 0) and a queue over it.
fn one_chain(descs: Vec<RawDesc>) -> (GuestMemory, DeviceQueue) {
    let ring = HostileRing {
        descs,
        heads: vec![0],
        avail_idx: 1,
    };
    (memory_with(&ring), device_queue(0, false))
}

fn pop_one(descs: Vec<RawDesc>) -> Result<Chain, QueueError> {
    let (mem, mut q) = one_chain(descs);
    Ok(q.pop(&mem)?.expect("one chain is available"))
}

fn chain_error(descs: Vec<RawDesc>) -> ChainError {
    match pop_one(descs) {
        Err(QueueError::Chain { source, .. }) => source,
        other => panic!("expected a refused chain, got {other:?}"),
    }
}

#[test]
fn valid_chain_reads_and_writes_in_order() {
    let (mem, mut q) = one_chain(vec![
        desc(DATA, 4, NEXT, 1),
        desc(DATA + 0x100, 4, NEXT, 2),
        desc(DATA + 0x200, 3, WRITE | NEXT, 3),
        desc(DATA + 0x300, 8, WRITE, 0),
    ]);
    mem.write_slice(&[1, 2, 3, 4], GuestAddress(DATA)).unwrap();
    mem.write_slice(&[5, 6, 7, 8], GuestAddress(DATA + 0x100))
        .unwrap();
    let chain = q.pop(&mem).unwrap().unwrap();
    assert_eq!((chain.head(), chain.descriptors().len()), (0, 4));
    assert_eq!(chain.writer(&mem).available_bytes(), 11);
    let mut out = Vec::new();
    assert_eq!(chain.gather(&mem, 6, &mut out).unwrap(), 8, "offered");
    assert_eq!(out, [1, 2, 3, 4, 5, 6]);
    let mut reader = chain.reader(&mem);
    assert_eq!(reader.read_obj::<u32>().unwrap(), 0x0403_0201);
    assert_eq!(reader.available_bytes(), 4);
    assert_eq!(chain.scatter(&mem, &[9; 20]).unwrap(), 11);
    let mut back = [0u8; 4];
    mem.read_slice(&mut back, GuestAddress(DATA + 0x300))
        .unwrap();
    assert_eq!(back, [9; 4]);
    assert!(q.pop(&mem).unwrap().is_none());
}

#[test]
fn outside_memory_is_refused() {
    let e = chain_error(vec![desc(MEM_SIZE - 8, 16, WRITE, 0)]);
    assert!(matches!(e, ChainError::OutOfMemory { .. }), "{e}");
    let e = chain_error(vec![desc(u64::MAX - 4, 16, 0, 0)]);
    assert!(matches!(e, ChainError::OutOfMemory { .. }), "{e}");
}

#[test]
fn readable_after_writable_is_refused() {
    let e = chain_error(vec![desc(DATA, 16, WRITE | NEXT, 1), desc(DATA, 16, 0, 0)]);
    assert_eq!(e, ChainError::Order { head: 0 });
}

#[test]
fn loop_is_refused() {
    // 0 -> 1 -> 0 -> ...
    let e = chain_error(vec![desc(DATA, 16, NEXT, 1), desc(DATA, 16, NEXT, 0)]);
    assert_eq!(e, ChainError::Truncated { head: 0 });
}

/// Regression (found by the fuzz test below): an available index more than a queue size
/// ahead made `pop_descriptor_chain` return None while `enable_notification` kept saying
/// "more", spinning the worker forever.
#[test]
fn runaway_avail_index_is_an_error_not_a_hang() {
    let ring = HostileRing {
        descs: Vec::new(),
        heads: Vec::new(),
        avail_idx: QUEUE_SIZE + 5,
    };
    let mem = memory_with(&ring);
    let irq = RecordingInterrupt::default();
    let err = device_queue(0, false)
        .drain(&mem, &irq, |_| Ok(0))
        .unwrap_err();
    assert!(err.contains("available ring"), "{err}");
    assert!(device_queue(0, true).pop(&mem).is_err());
}

#[test]
fn fuzz_drain_hostile_rings() {
    use proptest::prelude::*;
    fuzz(
        "drain_queue",
        3000,
        (arb_ring(), any::<bool>()),
        |(ring, event_idx)| {
            let mem = memory_with(&ring);
            let mut q = device_queue(0, event_idx);
            let irq = RecordingInterrupt::default();
            let mut chains = 0u16;
            let result = q.drain(&mem, &irq, |chain| {
                for d in chain.descriptors() {
                    let end = d.addr().0.checked_add(u64::from(d.len()));
                    assert!(d.len() == 0 || end.is_some_and(|e| e <= MEM_SIZE), "{d:?}");
                }
                let mut out = Vec::new();
                chain.gather(&mem, 4096, &mut out)?;
                chains += 1;
                chain.scatter(&mem, &[0xab; 300])
            });
            if result.is_ok() {
                prop_assert_eq!(used_idx(&mem), chains);
                prop_assert_eq!(q.state().next_used, chains);
            }
            Ok(())
        },
    );
}

/// A driver posting one-buffer chains with heads 0.. in order, on the fuzz layout.
struct Driver {
    mem: GuestMemory,
    posted: u16,
}

impl Driver {
    fn new() -> Self {
        let descs = (0..QUEUE_SIZE)
            .map(|i| desc(DATA + 0x100 * u64::from(i), 0x100, WRITE, 0))
            .collect();
        let ring = HostileRing {
            descs,
            heads: Vec::new(),
            avail_idx: 0,
        };
        Self {
            mem: memory_with(&ring),
            posted: 0,
        }
    }

    /// Post `n` chains and let the device pop them; returns their heads.
    fn post_and_pop(&mut self, q: &mut DeviceQueue, n: u16) -> Vec<u16> {
        let heads: Vec<u16> = (0..n)
            .map(|i| (self.posted.wrapping_add(i)) % QUEUE_SIZE)
            .collect();
        for (i, &head) in heads.iter().enumerate() {
            let slot = u64::from(self.posted.wrapping_add(i as u16) % QUEUE_SIZE);
            self.mem
                .write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
                .unwrap();
        }
        self.posted = self.posted.wrapping_add(n);
        self.mem
            .write_obj(self.posted, GuestAddress(AVAIL + 2))
            .unwrap();
        for &head in &heads {
            assert_eq!(q.pop(&self.mem).unwrap().unwrap().head(), head);
        }
        heads
    }

    /// The used entries `from..used_idx`.
    fn used_since(&self, from: u16) -> Vec<(u16, u32)> {
        let idx = used_idx(&self.mem);
        (from..idx)
            .map(|i| {
                let at = USED + 4 + 8 * u64::from(i % QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (id as u16, len)
            })
            .collect()
    }

    fn set_used_event(&self, value: u16) {
        let at = AVAIL + 4 + 2 * u64::from(QUEUE_SIZE);
        self.mem.write_obj(value, GuestAddress(at)).unwrap();
    }
}

#[test]
fn batch_returns_every_buffer_in_order_across_ring_wraps() {
    let mut d = Driver::new();
    let mut q = device_queue(0, false);
    for round in 0..7u32 {
        let before = used_idx(&d.mem);
        let heads = d.post_and_pop(&mut q, 3);
        let used: Vec<(u16, u32)> = heads
            .iter()
            .map(|&h| (h, round * 10 + u32::from(h)))
            .collect();
        q.add_used_batch(&d.mem, &used).unwrap();
        assert_eq!(d.used_since(before), used, "round {round}");
    }
    assert_eq!(q.state().next_used, 21);
    assert_eq!(q.state().next_avail, 21);
}

#[test]
fn batch_with_a_bad_head_publishes_nothing() {
    let mut d = Driver::new();
    let mut q = device_queue(0, false);
    let heads = d.post_and_pop(&mut q, 2);
    for bad in [
        vec![(QUEUE_SIZE, 1), (heads[1], 1)],
        vec![(heads[0], 1), (QUEUE_SIZE, 1)],
    ] {
        let err = q.add_used_batch(&d.mem, &bad).unwrap_err().to_string();
        assert!(err.contains("buffer 16"), "{err}");
        assert_eq!(used_idx(&d.mem), 0, "{bad:?}");
    }
}

#[test]
fn event_idx_interrupts_only_when_used_event_is_passed() {
    let mut d = Driver::new();
    let mut q = device_queue(0, true);
    let irq = RecordingInterrupt::default();
    let count = || irq.triggers.load(Ordering::Relaxed);
    // The driver wants an interrupt once the used index passes 1.
    d.set_used_event(1);
    let heads = d.post_and_pop(&mut q, 3);
    let used: Vec<(u16, u32)> = heads.iter().map(|&h| (h, 1)).collect();
    q.add_used_batch(&d.mem, &used).unwrap();
    assert!(q.signal_used(&d.mem, &irq).unwrap());
    assert_eq!(count(), 1, "used_event 1 lies within the batch 0..3");
    let heads = d.post_and_pop(&mut q, 1);
    q.complete(&d.mem, &irq, heads[0], 1).unwrap();
    assert_eq!(count(), 1, "used_event 1 was already passed");
    assert!(
        !q.signal_used(&d.mem, &irq).unwrap(),
        "nothing new was used"
    );
    d.set_used_event(4);
    let heads = d.post_and_pop(&mut q, 1);
    q.complete(&d.mem, &irq, heads[0], 1).unwrap();
    assert_eq!(count(), 2, "used index 5 passes used_event 4");
}

#[test]
fn without_event_idx_every_new_use_interrupts_once() {
    let mut d = Driver::new();
    let mut q = device_queue(0, false);
    let irq = RecordingInterrupt::default();
    for round in 1..=2 {
        let heads = d.post_and_pop(&mut q, 2);
        q.add_used_batch(&d.mem, &[(heads[0], 1), (heads[1], 1)])
            .unwrap();
        q.signal_used(&d.mem, &irq).unwrap();
        q.signal_used(&d.mem, &irq).unwrap();
        assert_eq!(irq.triggers.load(Ordering::Relaxed), round);
    }
}

#[test]
fn undo_pop_hands_the_chain_out_again() {
    let mut d = Driver::new();
    let mut q = device_queue(0, false);
    let heads = d.post_and_pop(&mut q, 2);
    q.undo_pop();
    assert_eq!(q.state().next_avail, 1);
    assert_eq!(q.pop(&d.mem).unwrap().unwrap().head(), heads[1]);
}
