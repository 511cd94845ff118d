//! Test helpers shared by the device tests.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Run a property test of `cases` cases and print how many ran (`fuzz <name>: N cases`).
pub fn fuzz<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let count = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| {
        count.fetch_add(1, Ordering::Relaxed);
        test(value)
    });
    eprintln!("fuzz {name}: {} cases", count.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("fuzz {name} failed: {e}");
    }
}

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudphone_virtio::{ActivatedQueue, GuestMemory, InterruptCause, VirtioInterrupt};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// 16 MiB of guest memory at address 0.
pub fn guest_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

/// Records interrupts the device raises.
#[derive(Default)]
pub struct TestInterrupt {
    pub causes: Mutex<Vec<InterruptCause>>,
    pub needs_reset: AtomicBool,
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()> {
        self.causes.lock().unwrap().push(cause);
        Ok(())
    }
    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

impl TestInterrupt {
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }
}

/// One buffer of a chain a test posts: guest address, length, device-writable or not.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A split virtqueue driven from the "driver" side by a test, laid out by virtio-queue's mock.
pub struct TestQueue<'m> {
    mock: MockSplitQueue<'m, GuestMemory>,
    notify: EventFd,
    next_desc: u16,
    seen_used: u16,
}

impl<'m> TestQueue<'m> {
    /// A queue of `size` descriptors whose rings start at `base`.
    pub fn new(mem: &'m GuestMemory, base: u64, size: u16) -> Self {
        TestQueue {
            mock: MockSplitQueue::create(mem, GuestAddress(base), size),
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// The queue as the transport hands it to a device on activation.
    pub fn activated(&self, index: u16) -> ActivatedQueue {
        ActivatedQueue {
            index,
            queue: self.mock.create_queue::<Queue>().unwrap(),
            notify: self.notify.try_clone().unwrap(),
        }
    }

    /// Post one chain (without notifying); returns its head index.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let last = i + 1 == bufs.len();
                let mut flags = if b.write { VRING_DESC_F_WRITE as u16 } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let next = if last { 0 } else { head + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(b.addr, b.len, flags, next))
            })
            .collect();
        self.mock.add_desc_chains(&raw, head).unwrap();
        self.next_desc += bufs.len() as u16;
        head
    }

    /// Kick the device.
    pub fn notify(&self) {
        self.notify.write(1).unwrap();
    }

    /// Post and kick.
    pub fn add_notify(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.add(bufs);
        self.notify();
        head
    }

    /// Used entries (head, len) the device returned since the last call, waiting up to 5 s for
    /// at least `min` of them.
    pub fn wait_used(&mut self, min: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let idx = self.mock.used().idx().load();
            let ready = idx.wrapping_sub(self.seen_used) as usize;
            if ready >= min || Instant::now() > deadline {
                let mut out = Vec::new();
                while self.seen_used != idx {
                    let slot = self.seen_used % self.size();
                    let elem = self.mock.used().ring().ref_at(slot as usize).unwrap().load();
                    out.push((elem.id() as u16, elem.len()));
                    self.seen_used = self.seen_used.wrapping_add(1);
                }
                return out;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn size(&self) -> u16 {
        (self.mock.desc_table().total_size() / 16) as u16
    }
}

/// Write `data` at guest address `addr`.
pub fn poke(mem: &GuestMemory, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr)).unwrap();
}

/// Read `len` bytes at guest address `addr`.
pub fn peek(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

/// The interrupt as the `Arc<dyn>` devices take, plus a handle to inspect it.
pub fn interrupt() -> (Arc<TestInterrupt>, Arc<dyn VirtioInterrupt>) {
    let irq = Arc::new(TestInterrupt::default());
    (irq.clone(), irq)
}
