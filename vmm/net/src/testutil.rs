//! Test helpers shared by the device tests.

pub use cloudphone_virtio::testing::hostile::fuzz;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudphone_virtio::{ActivatedQueue, GuestMemory, InterruptCause, VirtioInterrupt};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
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

/// A split virtqueue driven from the "driver" side by a test. (virtio-queue's
/// `MockSplitQueue` places its used ring inside the avail ring for queues with more than a few
/// entries, so the rings are laid out here: descriptors, avail ring, used ring page-aligned.)
pub struct TestQueue<'m> {
    mem: &'m GuestMemory,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: EventFd,
    next_desc: u16,
    seen_used: u16,
}

impl<'m> TestQueue<'m> {
    /// A queue of `size` descriptors whose rings start at `base` (uses 18*size bytes + 8 KiB).
    pub fn new(mem: &'m GuestMemory, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4096);
        let zeroes = vec![0u8; (used + 6 + 8 * u64::from(size) - base) as usize];
        mem.write_slice(&zeroes, GuestAddress(base)).unwrap();
        TestQueue {
            mem,
            size,
            desc,
            avail,
            used,
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            next_desc: 0,
            seen_used: 0,
        }
    }

    /// The queue as the transport hands it to a device on activation.
    pub fn activated(&self, index: u16) -> ActivatedQueue {
        let mut queue = Queue::new(self.size).unwrap();
        queue.set_size(self.size);
        queue.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        queue.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        queue.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        queue.set_ready(true);
        ActivatedQueue {
            index,
            queue,
            notify: self.notify.try_clone().unwrap(),
        }
    }

    fn read_u16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    fn write_u16(&self, addr: u64, value: u16) {
        self.mem
            .write_obj(value.to_le(), GuestAddress(addr))
            .unwrap();
    }

    /// The head index the next [`add`](Self::add) will use.
    pub fn next_head(&self) -> u16 {
        self.next_desc
    }

    /// Post one chain (without notifying); returns its head index. Descriptor slots are reused
    /// round-robin, so a test must let the device consume chains before posting `size` more.
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if b.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { 0 } else { (index + 1) % self.size };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.mem
                .write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(index)))
                .unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        let idx = self.read_u16(self.avail + 2);
        self.write_u16(self.avail + 4 + 2 * u64::from(idx % self.size), head);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.write_u16(self.avail + 2, idx.wrapping_add(1));
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
        self.wait_used_unless(min, &|| false)
    }

    /// Like [`wait_used`](Self::wait_used) but stops waiting as soon as `abort()` is true.
    pub fn wait_used_unless(&mut self, min: usize, abort: &dyn Fn() -> bool) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let idx = self.read_u16(self.used + 2);
            let ready = idx.wrapping_sub(self.seen_used) as usize;
            if ready >= min || abort() || Instant::now() > deadline {
                let mut out = Vec::new();
                while self.seen_used != idx {
                    let elem = self.used + 4 + 8 * u64::from(self.seen_used % self.size);
                    let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
                    let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
                    out.push((u32::from_le(id) as u16, u32::from_le(len)));
                    self.seen_used = self.seen_used.wrapping_add(1);
                }
                return out;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
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

/// A virtio-net backend on one end of a datagram socket pair (frames keep their boundaries);
/// the test holds the other end as "the wire".
pub struct DgramBackend {
    sock: std::os::unix::net::UnixDatagram,
    /// The guest features the device last passed to `set_offload`.
    pub offload: Mutex<Option<u64>>,
}

impl DgramBackend {
    /// The backend and the test's end of the wire (blocking, 5 s read timeout).
    pub fn pair() -> (Arc<Self>, std::os::unix::net::UnixDatagram) {
        let (device_end, wire) = std::os::unix::net::UnixDatagram::pair().unwrap();
        device_end.set_nonblocking(true).unwrap();
        wire.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (
            Arc::new(DgramBackend {
                sock: device_end,
                offload: Mutex::new(None),
            }),
            wire,
        )
    }
}

impl crate::NetBackend for DgramBackend {
    fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }
    fn recv(&self, target: &crate::net::RxTarget<'_>) -> std::io::Result<usize> {
        target.read_from(std::os::fd::AsRawFd::as_raw_fd(&self.sock))
    }
    fn send(&self, frame: &crate::net::GuestFrame<'_>) -> std::io::Result<()> {
        frame.write_to(std::os::fd::AsRawFd::as_raw_fd(&self.sock))
    }
    fn set_offload(&self, guest_features: u64) -> std::io::Result<()> {
        *self.offload.lock().unwrap() = Some(guest_features);
        Ok(())
    }
}
