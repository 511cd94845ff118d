//! Balloon tests. virtio-drivers has no balloon driver, so a small hand-written driver lays out
//! split rings in guest memory and publishes chains; the device runs on its real worker thread.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudphone_virtio::{
    ActivatedQueue, GuestMemory, InterruptCause, VirtioDevice, VirtioInterrupt,
};
use proptest::prelude::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ};
use crate::{Balloon, BalloonError, BalloonHandle};

const MIB: u64 = 1 << 20;
const QUEUE_LEN: u16 = 64;
/// Driver-side buffers (PFN arrays, stats) live here, below the memory the tests release.
const BUFFERS: u64 = 0x8_0000;
const VERSION_1: u64 = 1 << 32;

#[derive(Default)]
struct TestInterrupt {
    queue: AtomicUsize,
    config: AtomicUsize,
    needs_reset: AtomicUsize,
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, cause: InterruptCause) -> std::io::Result<()> {
        match cause {
            InterruptCause::Queue(_) => self.queue.fetch_add(1, Ordering::SeqCst),
            InterruptCause::Config => self.config.fetch_add(1, Ordering::SeqCst),
        };
        Ok(())
    }
    fn signal_needs_reset(&self) {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
    }
}

fn ring_base(q: usize) -> u64 {
    0x1_0000 * q as u64
}

/// Driver-side split rings: queue `q` has its descriptor table at `bases[q]`, the avail ring
/// one page above and the used ring two pages above.
struct Rings {
    mem: GuestMemory,
    bases: Vec<u64>,
    next_desc: Vec<u16>,
}

impl Rings {
    fn new(mem: GuestMemory, bases: Vec<u64>) -> Self {
        let next_desc = vec![0; bases.len()];
        Rings {
            mem,
            bases,
            next_desc,
        }
    }

    fn queue(&self, q: usize) -> Queue {
        let base = self.bases[q];
        let mut queue = Queue::new(QUEUE_LEN).unwrap();
        queue.set_size(QUEUE_LEN);
        queue.set_desc_table_address(Some(base as u32), Some((base >> 32) as u32));
        queue.set_avail_ring_address(
            Some((base + 0x1000) as u32),
            Some(((base + 0x1000) >> 32) as u32),
        );
        queue.set_used_ring_address(
            Some((base + 0x2000) as u32),
            Some(((base + 0x2000) >> 32) as u32),
        );
        queue.set_ready(true);
        queue
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.bases[q] + 0x2002))
            .unwrap()
    }

    /// Publish one chain on queue `q` (the device sees it on the next notification).
    fn publish(&mut self, q: usize, parts: &[(u64, u32, bool)]) {
        let base = self.bases[q];
        if usize::from(self.next_desc[q]) + parts.len() > usize::from(QUEUE_LEN) {
            self.next_desc[q] = 0;
        }
        let head = self.next_desc[q];
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, head + i as u16 + 1));
            self.mem
                .write_obj(d, GuestAddress(base + 16 * u64::from(head + i as u16)))
                .unwrap();
        }
        self.next_desc[q] += parts.len() as u16;
        let idx: u16 = self.mem.read_obj(GuestAddress(base + 0x1002)).unwrap();
        self.mem
            .write_obj(
                head,
                GuestAddress(base + 0x1004 + 2 * u64::from(idx % QUEUE_LEN)),
            )
            .unwrap();
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(base + 0x1002))
            .unwrap();
    }

    fn wait_used(&self, q: usize, idx: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.used_idx(q) != idx {
            assert!(
                Instant::now() < deadline,
                "queue {q}: device never used the buffer"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The guest side: rings for every negotiated queue and a running balloon device.
struct Driver {
    mem: GuestMemory,
    rings: Rings,
    kicks: Vec<EventFd>,
    balloon: Balloon,
    handle: BalloonHandle,
    irq: Arc<TestInterrupt>,
}

impl Driver {
    fn new(mem: GuestMemory, features: u64) -> Self {
        let (mut balloon, handle) = Balloon::new(mem.last_addr().0.div_ceil(MIB)).unwrap();
        balloon.ack_features(VERSION_1 | features);
        let n = 2
            + usize::from(features & (1 << VIRTIO_BALLOON_F_STATS_VQ) != 0)
            + usize::from(features & (1 << VIRTIO_BALLOON_F_REPORTING) != 0);
        let rings = Rings::new(mem.clone(), (0..n).map(ring_base).collect());
        let irq = Arc::new(TestInterrupt::default());
        let mut kicks = Vec::new();
        let mut queues = Vec::new();
        for i in 0..n {
            let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            kicks.push(notify.try_clone().unwrap());
            queues.push(ActivatedQueue {
                index: i as u16,
                queue: rings.queue(i),
                notify,
            });
        }
        balloon.activate(mem.clone(), irq.clone(), queues).unwrap();
        Driver {
            mem,
            rings,
            kicks,
            balloon,
            handle,
            irq,
        }
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.rings.used_idx(q)
    }

    fn publish(&mut self, q: usize, parts: &[(u64, u32, bool)]) {
        self.rings.publish(q, parts);
    }

    fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    /// Publish, kick and wait until the device used the chain.
    fn submit(&mut self, q: usize, parts: &[(u64, u32, bool)]) {
        let before = self.used_idx(q);
        self.publish(q, parts);
        self.kick(q);
        self.wait_used(q, before.wrapping_add(1));
    }

    fn wait_used(&self, q: usize, idx: u16) {
        self.rings.wait_used(q, idx);
    }

    /// Inflate `pages` (guest PFNs) in buffers of 256 PFNs, as Linux does.
    fn inflate(&mut self, pfns: &[u32]) {
        for chunk in pfns.chunks(256) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
            self.mem.write_slice(&bytes, GuestAddress(BUFFERS)).unwrap();
            self.submit(0, &[(BUFFERS, bytes.len() as u32, false)]);
        }
    }
}

/// Guest memory backed by a memfd (how the VMM shares memory with other processes).
fn memfd_memory(size: u64) -> (GuestMemory, File) {
    // SAFETY: memfd_create with a static NUL-terminated name; the fd is owned by `file` below.
    let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    let region = FileOffset::new(file.try_clone().unwrap(), 0);
    let mem =
        GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size as usize, Some(region))])
            .unwrap();
    (mem, file)
}

fn touch(mem: &GuestMemory, from: u64, len: u64) {
    for addr in (from..from + len).step_by(4096) {
        mem.write_obj(0x5au8, GuestAddress(addr)).unwrap();
    }
}

/// Resident pages of the host mapping of guest `from..from+len` (mincore).
fn resident_pages(mem: &GuestMemory, from: u64, len: u64) -> usize {
    let host = mem.get_host_address(GuestAddress(from)).unwrap();
    let mut vec = vec![0u8; (len / 4096) as usize];
    // SAFETY: the range lies inside one mapping owned by `mem`; `vec` has one byte per page.
    let rc = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&b| b & 1 != 0).count()
}

/// Rss (KiB) of the mapping that contains guest address 0, from /proc/self/smaps.
fn mapping_rss_kib(mem: &GuestMemory) -> u64 {
    let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut in_vma = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, e)) = range.split_once('-') {
                if let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                    in_vma = (s..e).contains(&host);
                    continue;
                }
            }
        }
        if in_vma {
            if let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
    }
    panic!("guest mapping not found in /proc/self/smaps");
}

fn allocated_bytes(file: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    file.metadata().unwrap().blocks() * 512
}

#[test]
fn inflate_really_releases_memfd_memory() {
    let (mem, file) = memfd_memory(64 * MIB);
    let mut d = Driver::new(mem.clone(), 0);
    touch(&mem, 0, 64 * MIB);
    let rss_before = mapping_rss_kib(&mem);
    let alloc_before = allocated_bytes(&file);
    assert_eq!(resident_pages(&mem, 16 * MIB, 32 * MIB), 8192);
    // The guest balloons 32 MiB: pages 16 MiB .. 48 MiB, in shuffled order.
    let mut pfns: Vec<u32> = (4096..12288).collect();
    pfns.reverse();
    pfns.swap(0, 5000);
    d.inflate(&pfns);
    assert_eq!(
        resident_pages(&mem, 16 * MIB, 32 * MIB),
        0,
        "inflated pages still resident"
    );
    assert_eq!(
        resident_pages(&mem, 0, 16 * MIB),
        4096,
        "pages outside the balloon were dropped"
    );
    let dropped_kib = rss_before - mapping_rss_kib(&mem);
    assert!(
        (29_491..=36_045).contains(&dropped_kib),
        "RSS dropped {dropped_kib} KiB, expected 32 MiB ±10%"
    );
    let freed = alloc_before - allocated_bytes(&file);
    assert_eq!(
        freed,
        32 * MIB,
        "memfd allocation must shrink by the balloon size"
    );
    assert_eq!(d.handle.snapshot().released_bytes, 32 * MIB);
    // The guest reads zeros there afterwards; deflating needs nothing from the host.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(20 * MIB)).unwrap(), 0);
    let bytes: Vec<u8> = (4096u32..4352).flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BUFFERS)).unwrap();
    d.submit(1, &[(BUFFERS, bytes.len() as u32, false)]);
    assert_eq!(d.irq.needs_reset.load(Ordering::SeqCst), 0);
    assert!(d.irq.queue.load(Ordering::SeqCst) > 0);
}

#[test]
fn inflate_releases_anonymous_memory_too() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (16 * MIB) as usize)]).unwrap();
    let mut d = Driver::new(mem.clone(), 0);
    touch(&mem, 0, 16 * MIB);
    d.inflate(&(1024..3072).collect::<Vec<u32>>());
    assert_eq!(resident_pages(&mem, 4 * MIB, 8 * MIB), 0);
    assert_eq!(resident_pages(&mem, 12 * MIB, 4 * MIB), 1024);
}

#[test]
fn hostile_inflate_buffers_release_nothing_and_keep_the_device_up() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (8 * MIB) as usize)]).unwrap();
    let mut d = Driver::new(mem.clone(), 0);
    touch(&mem, 0, 8 * MIB);
    // PFNs past guest memory, at u32::MAX, a ragged buffer, an oversized buffer.
    d.inflate(&[2048, 4096, u32::MAX]);
    mem.write_slice(&[1, 0, 0, 0, 9], GuestAddress(BUFFERS))
        .unwrap();
    d.submit(0, &[(BUFFERS, 5, false)]);
    d.submit(0, &[(BUFFERS, 64 * 1024, false)]);
    // A PFN buffer the device would have to write into is still just read.
    mem.write_obj(1000u32, GuestAddress(BUFFERS)).unwrap();
    d.submit(0, &[(BUFFERS, 4, true)]);
    assert_eq!(resident_pages(&mem, 0, 8 * MIB), 2048);
    assert_eq!(d.handle.snapshot().released_bytes, 0);
    assert_eq!(d.irq.needs_reset.load(Ordering::SeqCst), 0);
    // A buffer outside guest memory is a broken driver: the device asks for a reset.
    d.publish(0, &[(16 * MIB, 4, false)]);
    d.kick(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.irq.needs_reset.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "device did not flag needs-reset");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn free_page_reports_are_released() {
    let (mem, file) = memfd_memory(32 * MIB);
    // Reporting without stats: the reporting queue is index 2.
    let mut d = Driver::new(mem.clone(), 1 << VIRTIO_BALLOON_F_REPORTING);
    touch(&mem, 0, 32 * MIB);
    let before = allocated_bytes(&file);
    d.submit(
        2,
        &[
            (8 * MIB, (4 * MIB) as u32, true),
            (20 * MIB, (2 * MIB) as u32, true),
        ],
    );
    assert_eq!(resident_pages(&mem, 8 * MIB, 4 * MIB), 0);
    assert_eq!(resident_pages(&mem, 20 * MIB, 2 * MIB), 0);
    assert_eq!(before - allocated_bytes(&file), 6 * MIB);
    // Unaligned and out-of-range reports are skipped.
    d.submit(2, &[(MIB + 100, 4096, true)]);
    assert_eq!(d.handle.snapshot().released_bytes, 6 * MIB);
    assert_eq!(d.irq.needs_reset.load(Ordering::SeqCst), 0);
}

fn stats_buffer(free: u64, total: u64) -> Vec<u8> {
    [(4u16, free), (5u16, total)]
        .iter()
        .flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect()
}

#[test]
fn stats_are_requested_and_parsed() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (8 * MIB) as usize)]).unwrap();
    let mut d = Driver::new(
        mem.clone(),
        (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_REPORTING),
    );
    // The driver hands over its first stats buffer at start-up; the device keeps it.
    mem.write_slice(&stats_buffer(100 * MIB, 512 * MIB), GuestAddress(BUFFERS))
        .unwrap();
    d.publish(2, &[(BUFFERS, 20, false)]);
    d.kick(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.handle.snapshot().stats.free_memory.is_none() {
        assert!(Instant::now() < deadline, "first stats never parsed");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        d.used_idx(2),
        0,
        "the stats buffer must be held until the host asks"
    );
    // The host asks: the device returns the buffer; the driver refills it with new values.
    let handle = d.handle.clone();
    let asker = std::thread::spawn(move || handle.status(Duration::from_secs(5)));
    d.wait_used(2, 1);
    mem.write_slice(&stats_buffer(42 * MIB, 512 * MIB), GuestAddress(BUFFERS))
        .unwrap();
    d.publish(2, &[(BUFFERS, 20, false)]);
    d.kick(2);
    let status = asker.join().unwrap();
    assert!(status.stats_fresh);
    assert_eq!(status.stats.free_memory, Some(42 * MIB));
    assert_eq!(status.stats.total_memory, Some(512 * MIB));
    // A garbage stats buffer is ignored, the old values stay.
    mem.write_slice(&[1, 2, 3], GuestAddress(BUFFERS)).unwrap();
    let handle = d.handle.clone();
    let asker = std::thread::spawn(move || handle.status(Duration::from_millis(300)));
    d.wait_used(2, 2);
    d.publish(2, &[(BUFFERS, 3, false)]);
    d.kick(2);
    assert_eq!(asker.join().unwrap().stats.free_memory, Some(42 * MIB));
    // Reporting moved to queue 3 with stats negotiated.
    d.submit(3, &[(4 * MIB, (2 * MIB) as u32, true)]);
    assert_eq!(d.handle.snapshot().released_bytes, 2 * MIB);
}

#[test]
fn target_updates_config_and_interrupts_the_driver() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
    let mut d = Driver::new(mem, 0);
    d.handle.set_target_mib(48).unwrap();
    let mut cfg = [0u8; 8];
    d.balloon.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg[0..4].try_into().unwrap()), 48 * 256);
    assert_eq!(d.irq.config.load(Ordering::SeqCst), 1);
    assert_eq!(
        d.handle.set_target_mib(65),
        Err(BalloonError::TargetTooLarge {
            target_mib: 65,
            guest_mib: 64
        })
    );
    d.balloon.write_config(4, &(12 * 256u32).to_le_bytes());
    d.balloon.write_config(0, &[0xff; 4]);
    let status = d.handle.snapshot();
    assert_eq!((status.target_mib, status.actual_mib), (48, 12));
    let mut odd = [0xaau8; 4];
    d.balloon.read_config(u64::MAX - 1, &mut odd);
    assert_eq!(odd, [0; 4]);
    // Reset drops the interrupt; re-activation with the wrong queue count is refused.
    d.balloon.reset();
    d.handle.set_target_mib(1).unwrap();
    assert_eq!(d.irq.config.load(Ordering::SeqCst), 1);
    let err = d
        .balloon
        .activate(d.mem.clone(), d.irq.clone(), vec![])
        .unwrap_err();
    assert!(err.to_string().contains("needs 2 queues"));
}

/// Random PFN lists: only the distinct in-memory PFNs are released, nothing panics.
#[test]
fn prop_inflate_releases_exactly_the_valid_pfns() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (4 * MIB) as usize)]).unwrap();
    let mut d = Driver::new(mem, 0);
    let cases = AtomicUsize::new(0);
    let d = std::cell::RefCell::new(&mut d);
    proptest!(ProptestConfig::with_cases(300), |(pfns in proptest::collection::vec(prop_oneof![200u32..1024, any::<u32>()], 0..256))| {
        cases.fetch_add(1, Ordering::Relaxed);
        let mut d = d.borrow_mut();
        let before = d.handle.snapshot().released_bytes;
        d.inflate(&pfns);
        let mut valid: Vec<u32> = pfns.iter().copied().filter(|&p| (200..1024).contains(&p)).collect();
        valid.sort_unstable();
        valid.dedup();
        let after = d.handle.snapshot().released_bytes;
        prop_assert_eq!(after - before, valid.len() as u64 * 4096);
        prop_assert_eq!(d.irq.needs_reset.load(Ordering::SeqCst), 0);
    });
    eprintln!("fuzz balloon_inflate: {} cases", cases.into_inner());
}

/// The whole path a Linux guest takes: feature negotiation, queue setup and notifications
/// through the real virtio-pci transport, config-change MSI-X on a new target, inflate.
#[test]
fn balloon_behind_the_pci_transport() {
    use cloudphone_virtio::testing::{alloc_pages, test_memory, TestHarness, CONFIG_VECTOR};
    use virtio_drivers::transport::{DeviceStatus, Transport};

    let (balloon, handle) = Balloon::new(512).unwrap();
    let h = TestHarness::new(Box::new(balloon)).unwrap();
    let mut t = h.transport();
    t.set_status(DeviceStatus::empty());
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = t.read_device_features();
    let wanted = VERSION_1 | (1 << VIRTIO_BALLOON_F_STATS_VQ) | (1 << VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(offered & wanted, wanted, "features {offered:#x}");
    t.write_driver_features(wanted);
    t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    let mem = test_memory();
    let bases: Vec<u64> = (0..4).map(|_| alloc_pages(3).unwrap()).collect();
    let mut rings = Rings::new(mem.clone(), bases.clone());
    for (q, &base) in bases.iter().enumerate() {
        t.queue_set(
            q as u16,
            u32::from(QUEUE_LEN),
            base,
            base + 0x1000,
            base + 0x2000,
        );
    }
    t.finish_init();
    assert!(h.pci().is_activated());

    handle.set_target_mib(2).unwrap();
    assert!(
        h.msi().wait_for(CONFIG_VECTOR, 0, Duration::from_secs(5)),
        "no config interrupt"
    );
    assert_eq!(t.read_config_space::<u32>(0).unwrap(), 512);

    // Inflate 16 touched pages the "guest" owns.
    let pages = alloc_pages(16).unwrap();
    touch(&mem, pages, 16 * 4096);
    assert_eq!(resident_pages(&mem, pages, 16 * 4096), 16);
    let pfns: Vec<u8> = (0..16)
        .flat_map(|i| ((pages >> 12) as u32 + i).to_le_bytes())
        .collect();
    let buf = alloc_pages(1).unwrap();
    mem.write_slice(&pfns, GuestAddress(buf)).unwrap();
    rings.publish(0, &[(buf, pfns.len() as u32, false)]);
    t.notify(0);
    rings.wait_used(0, 1);
    assert_eq!(resident_pages(&mem, pages, 16 * 4096), 0);
    assert!(h
        .msi()
        .wait_for(TestHarness::queue_vector(0), 0, Duration::from_secs(5)));
    t.write_config_space::<u32>(4, 512).unwrap();
    let status = handle.snapshot();
    assert_eq!(
        (status.target_mib, status.actual_mib, status.released_bytes),
        (2, 2, 16 * 4096)
    );
    assert!(!h.needs_reset());

    // The driver hands over a stats buffer, which the device holds; then a snapshot is
    // restored into a new balloon under the same driver.
    mem.write_slice(&stats_buffer(100 * MIB, 512 * MIB), GuestAddress(buf))
        .unwrap();
    rings.publish(2, &[(buf, 20, false)]);
    t.notify(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.snapshot().stats.free_memory.is_none() {
        assert!(Instant::now() < deadline, "stats never parsed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut new_handle = None;
    let state = h
        .snapshot_restore(|| {
            let (restored, handle) = Balloon::new(512).unwrap();
            new_handle = Some(handle);
            Box::new(restored)
        })
        .unwrap();
    let handle = new_handle.unwrap();
    assert!(state.device.device.is_some());
    let status = handle.snapshot();
    assert_eq!(
        (status.target_mib, status.actual_mib, status.released_bytes),
        (2, 2, 16 * 4096),
        "target, actual and released bytes survive"
    );
    assert_eq!(status.stats.free_memory, Some(100 * MIB));
    // The restored device still holds the stats buffer: a stats request returns it.
    let asker = std::thread::spawn(move || handle.status(Duration::from_secs(5)));
    rings.wait_used(2, 1);
    mem.write_slice(&stats_buffer(7 * MIB, 512 * MIB), GuestAddress(buf))
        .unwrap();
    rings.publish(2, &[(buf, 20, false)]);
    t.notify(2);
    assert_eq!(asker.join().unwrap().stats.free_memory, Some(7 * MIB));
    // Inflating continues on the same rings.
    let more = alloc_pages(1).unwrap();
    touch(&mem, more, 4096);
    mem.write_slice(&((more >> 12) as u32).to_le_bytes(), GuestAddress(buf))
        .unwrap();
    rings.publish(0, &[(buf, 4, false)]);
    t.notify(0);
    rings.wait_used(0, 2);
    assert_eq!(resident_pages(&mem, more, 4096), 0);
    assert!(!h.needs_reset());
}

/// The hostile-ring property every device passes through its `DeviceQueue`, on all four
/// queues (inflate, deflate, stats, reporting).
#[test]
fn fuzz_balloon_hostile_rings() {
    let (mut dev, _handle) = Balloon::new(64).unwrap();
    dev.ack_features(VERSION_1 | 1 << VIRTIO_BALLOON_F_STATS_VQ | 1 << VIRTIO_BALLOON_F_REPORTING);
    cloudphone_virtio::testing::hostile::fuzz_worker("balloon_chains", 1000, 4, |a| {
        dev.worker(a).unwrap()
    });
}
