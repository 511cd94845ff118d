//! Hostile-guest helpers for property tests: arbitrary split rings written straight into
//! guest memory, and a runner that prints how many cases ran.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::GuestMemory;

/// Guest memory size of the fuzz layout.
pub(crate) const MEM_SIZE: u64 = 0x1_0000;
/// Queue size used by the fuzz layout.
pub(crate) const QUEUE_SIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// Buffers of "well-behaved" descriptors live in 0x4000..MEM_SIZE.
pub(crate) const DATA: u64 = 0x4000;

/// One raw descriptor as a hostile driver may write it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A hostile split ring: descriptor table contents, avail ring heads and avail idx.
#[derive(Clone, Debug)]
pub(crate) struct HostileRing {
    pub descs: Vec<RawDesc>,
    pub heads: Vec<u16>,
    pub avail_idx: u16,
}

fn arb_desc() -> impl Strategy<Value = RawDesc> {
    let addr = prop_oneof![
        4 => DATA..MEM_SIZE,
        1 => any::<u64>(),
        1 => (MEM_SIZE - 0x20)..(MEM_SIZE + 0x20),
        1 => Just(DESC),
    ];
    let len = prop_oneof![
        4 => 0u32..0x800,
        1 => Just(0u32),
        1 => any::<u32>(),
        1 => (0u32..8).prop_map(|n| n * 16),
    ];
    // NEXT = 1, WRITE = 2, INDIRECT = 4, plus junk bits.
    let flags = prop_oneof![4 => 0u16..8, 1 => any::<u16>()];
    let next = prop_oneof![4 => 0..QUEUE_SIZE, 1 => any::<u16>()];
    (addr, len, flags, next).prop_map(|(addr, len, flags, next)| RawDesc {
        addr,
        len,
        flags,
        next,
    })
}

/// Arbitrary rings: any descriptor contents, heads partly out of range, avail idx anywhere.
pub(crate) fn arb_ring() -> impl Strategy<Value = HostileRing> {
    (
        proptest::collection::vec(arb_desc(), QUEUE_SIZE as usize),
        proptest::collection::vec(prop_oneof![4 => 0..QUEUE_SIZE, 1 => any::<u16>()], 0..8),
        prop_oneof![4 => 0u16..10, 1 => any::<u16>()],
    )
        .prop_map(|(descs, heads, avail_idx)| HostileRing {
            descs,
            heads,
            avail_idx,
        })
}

/// Fresh guest memory with `ring` written at the fuzz layout.
pub(crate) fn memory_with(ring: &HostileRing) -> GuestMemory {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    for (i, d) in ring.descs.iter().enumerate() {
        let at = DESC + 16 * i as u64;
        mem.write_obj(d.addr, GuestAddress(at)).unwrap();
        mem.write_obj(d.len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(d.flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(d.next, GuestAddress(at + 14)).unwrap();
    }
    for (i, head) in ring.heads.iter().take(QUEUE_SIZE as usize).enumerate() {
        mem.write_obj(*head, GuestAddress(AVAIL + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(ring.avail_idx, GuestAddress(AVAIL + 2))
        .unwrap();
    mem
}

/// A ready queue over the fuzz layout.
pub(crate) fn queue(event_idx: bool) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// Used ring index the device published.
pub(crate) fn used_idx(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// Run `test` over `strategy` for `cases` cases and print the count (the issue asks for
/// fuzz iteration counts in the test output).
pub(crate) fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&strategy, |value| {
        ran.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        test(value)
    });
    eprintln!(
        "fuzz {name}: {} cases",
        ran.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("fuzz {name} failed: {e}");
    }
}

/// A [`VirtioInterrupt`](crate::VirtioInterrupt) that records what devices signalled.
#[derive(Default)]
pub(crate) struct RecordingInterrupt {
    pub triggers: std::sync::atomic::AtomicU64,
    pub needs_reset: std::sync::atomic::AtomicBool,
}

impl crate::VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, _cause: crate::InterruptCause) -> std::io::Result<()> {
        self.triggers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn signal_needs_reset(&self) {
        self.needs_reset
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
