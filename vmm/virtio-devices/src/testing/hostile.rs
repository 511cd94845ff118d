//! Hostile-guest helpers for property tests: arbitrary split rings written straight into
//! guest memory, a runner that prints how many cases ran, and [`fuzz_worker`], which runs
//! such rings through any device's worker handler so every device is checked the same way.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::{
    ActivatedQueue, Activation, Chain, DeviceQueue, GuestMemory, QueueError, WorkerContext,
    WorkerHandler,
};

/// Guest memory size of the fuzz layout.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Queue size used by the fuzz layout.
pub const QUEUE_SIZE: u16 = 16;
/// Descriptor table of the fuzz layout.
pub const DESC: u64 = 0x1000;
/// Available ring of the fuzz layout.
pub const AVAIL: u64 = 0x2000;
/// Used ring of the fuzz layout.
pub const USED: u64 = 0x3000;
/// Rings of the queues a case leaves idle (empty, at the bottom page, shared by all of them).
const IDLE_DESC: u64 = 0;
const IDLE_AVAIL: u64 = 0x100;
const IDLE_USED: u64 = 0x200;
/// Buffers of "well-behaved" descriptors live in 0x4000..MEM_SIZE.
pub const DATA: u64 = 0x4000;

/// One raw descriptor as a hostile driver may write it.
#[derive(Clone, Copy, Debug)]
pub struct RawDesc {
    /// Buffer guest address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// VRING_DESC_F_* bits (and junk).
    pub flags: u16,
    /// Next descriptor index when NEXT is set.
    pub next: u16,
}

/// A hostile split ring: descriptor table contents, avail ring heads and avail idx.
#[derive(Clone, Debug)]
pub struct HostileRing {
    /// Descriptor table entries from index 0.
    pub descs: Vec<RawDesc>,
    /// Available ring entries (chain heads).
    pub heads: Vec<u16>,
    /// The driver's available index.
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
pub fn arb_ring() -> impl Strategy<Value = HostileRing> {
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
pub fn memory_with(ring: &HostileRing) -> GuestMemory {
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
pub fn queue(event_idx: bool) -> Queue {
    queue_at(DESC, AVAIL, USED, event_idx)
}

fn queue_at(desc: u64, avail: u64, used: u64, event_idx: bool) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// Queue `index` over the fuzz layout as a device worker gets it.
pub fn device_queue(index: u16, event_idx: bool) -> DeviceQueue {
    activated(index, queue(event_idx))
}

fn activated(index: u16, queue: Queue) -> DeviceQueue {
    DeviceQueue::new(ActivatedQueue {
        index,
        queue,
        notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    })
}

/// Used ring index the device published.
pub fn used_idx(mem: &GuestMemory) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

/// Run `test` over `strategy` for `cases` cases and print the count (the issue asks for
/// fuzz iteration counts in the test output).
pub fn fuzz<S: Strategy>(
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

/// One chain of `(addr, len, device-writable)` buffers, posted on the fuzz layout's rings in
/// `mem` and popped through a [`DeviceQueue`]: what a device's request code gets to see.
pub fn single_chain(mem: &GuestMemory, bufs: &[(u64, u32, bool)]) -> Result<Chain, QueueError> {
    for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
        let more = i + 1 < bufs.len();
        let flags = u16::from(more) | if writable { 2 } else { 0 };
        let at = DESC + 16 * i as u64;
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(i as u16 + 1, GuestAddress(at + 14)).unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    Ok(device_queue(0, false)
        .pop(mem)?
        .expect("the posted chain is available"))
}

/// Property test of a device's worker against hostile drivers: each case writes an arbitrary
/// ring (see [`arb_ring`]) for one of the device's `queues` (the others stay empty), builds
/// the worker handler with `make`, and delivers that queue's notification (epoll token = queue
/// index, the convention of every device here). `make` is typically the device's
/// [`VirtioDevice::worker`](crate::VirtioDevice::worker). The handler must answer with `Ok` or a clean
/// `Err` (which marks the device DEVICE_NEEDS_RESET), never panic or hang, and never return
/// more buffers than the driver made available.
pub fn fuzz_worker<H: WorkerHandler>(
    name: &str,
    cases: u32,
    queues: u16,
    make: impl FnMut(Activation) -> H,
) {
    let make = std::cell::RefCell::new(make);
    let ctx = WorkerContext::new().unwrap();
    let strategy = (arb_ring(), any::<bool>(), 0..queues);
    fuzz(name, cases, strategy, |(ring, event_idx, target)| {
        let mem = memory_with(&ring);
        let dqs = (0..queues)
            .map(|index| {
                if index == target {
                    device_queue(index, event_idx)
                } else {
                    activated(index, queue_at(IDLE_DESC, IDLE_AVAIL, IDLE_USED, event_idx))
                }
            })
            .collect();
        let mut handler = (make.borrow_mut())(Activation {
            mem: mem.clone(),
            interrupt: Arc::new(RecordingInterrupt::default()),
            queues: dqs,
        });
        let ok = handler
            .handle(&ctx, u64::from(target), EventSet::IN)
            .is_ok();
        if ok && ring.avail_idx <= QUEUE_SIZE {
            prop_assert!(used_idx(&mem) <= ring.avail_idx);
        }
        Ok(())
    });
}

/// A [`VirtioInterrupt`](crate::VirtioInterrupt) that records what devices signalled.
#[derive(Default)]
pub struct RecordingInterrupt {
    /// Interrupts raised.
    pub triggers: std::sync::atomic::AtomicU64,
    /// Whether the device asked for DEVICE_NEEDS_RESET.
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
