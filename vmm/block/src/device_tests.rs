//! virtio-blk device tests: a driver built from virtio-queue's `MockSplitQueue` submits
//! well-formed and hostile chains; a raw file is the disk.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use proptest::prelude::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::raw::RawDisk;
use crate::testutil::{pattern, TempDir};
use cloudphone_virtio::{ActivatedQueue, InterruptCause};

const MEM_SIZE: usize = 64 << 20;
/// Guest addresses for request pieces, clear of the rings at 0.
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x30_0000;
const DISK_SECTORS: u64 = 2048;

#[derive(Default)]
struct TestInterrupt {
    queue: AtomicUsize,
    needs_reset: AtomicBool,
}

impl VirtioInterrupt for TestInterrupt {
    fn trigger(&self, _cause: InterruptCause) -> std::io::Result<()> {
        self.queue.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
    }
}

/// Driver-side ring layout for the harness (MockSplitQueue's layout overlaps its avail and
/// used rings past 128 entries, so the harness lays out and publishes its own).
const QUEUE_LEN: u16 = 256;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

fn ring_queue() -> Queue {
    let mut q = Queue::new(QUEUE_LEN).unwrap();
    q.set_size(QUEUE_LEN);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    q
}

/// One descriptor: (guest address, length, device-writable).
type Part = (u64, u32, bool);

struct Harness {
    _dir: TempDir,
    mem: GuestMemoryMmap,
    worker: Box<dyn WorkerHandler>,
    next_desc: u16,
    interrupt: Arc<TestInterrupt>,
    data: Vec<u8>,
}

impl Harness {
    fn new(read_only: bool) -> Self {
        let dir = TempDir::new("dev");
        let path = dir.path("disk.raw");
        let data = pattern(1, (DISK_SECTORS * 512) as usize);
        std::fs::write(&path, &data).unwrap();
        let disk: Box<dyn DiskBackend> = Box::new(RawDisk::open(&path, read_only).unwrap());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let interrupt = Arc::new(TestInterrupt::default());
        let worker = Block::new(disk, Some("test-disk-id"))
            .worker(Activation {
                mem: mem.clone(),
                interrupt: interrupt.clone(),
                queues: vec![DeviceQueue::new(ActivatedQueue {
                    index: 0,
                    queue: ring_queue(),
                    notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                })],
            })
            .unwrap();
        Harness {
            _dir: dir,
            mem,
            worker,
            next_desc: 0,
            interrupt,
            data,
        }
    }

    /// Submit one chain, run the worker, return (used len, status byte).
    fn submit(&mut self, parts: &[Part]) -> (u32, u8) {
        self.try_submit(parts)
            .expect("the device accepted the chain")
    }

    /// As `submit`, but a chain the shared queue layer refuses (buffer outside guest memory,
    /// readable after writable, ...) comes back as the worker's error, which makes the
    /// transport flag DEVICE_NEEDS_RESET.
    fn try_submit(&mut self, parts: &[Part]) -> Result<(u32, u8), String> {
        let n = parts.len() as u16;
        if self.next_desc + n > QUEUE_LEN {
            self.next_desc = 0;
        }
        let base = self.next_desc;
        for (i, &(addr, len, w)) in parts.iter().enumerate() {
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < parts.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let desc =
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, base + i as u16 + 1));
            self.mem
                .write_obj(
                    desc,
                    GuestAddress(DESC_TABLE + 16 * u64::from(base + i as u16)),
                )
                .unwrap();
        }
        self.next_desc += n;
        let avail_idx: u16 = self.mem.read_obj(GuestAddress(AVAIL_RING + 2)).unwrap();
        self.mem
            .write_obj(
                base,
                GuestAddress(AVAIL_RING + 4 + 2 * u64::from(avail_idx % QUEUE_LEN)),
            )
            .unwrap();
        self.mem
            .write_obj(avail_idx.wrapping_add(1), GuestAddress(AVAIL_RING + 2))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let used_idx =
            |m: &GuestMemoryMmap| m.read_obj::<u16>(GuestAddress(USED_RING + 2)).unwrap();
        let before = used_idx(&self.mem);
        let ctx = WorkerContext::new().unwrap();
        self.worker.handle(&ctx, QUEUE_TOKEN, EventSet::IN)?;
        assert_eq!(
            used_idx(&self.mem),
            before.wrapping_add(1),
            "exactly one chain completed"
        );
        let elem = GuestAddress(USED_RING + 4 + 8 * u64::from(before % QUEUE_LEN));
        let id: u32 = self.mem.read_obj(elem).unwrap();
        assert_eq!(id, u32::from(base));
        let used_len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        Ok((
            used_len,
            self.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(),
        ))
    }

    fn header(&self, kind: u32, sector: u64) -> Part {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        (HDR, 16, false)
    }

    fn status() -> Part {
        (STATUS, 1, true)
    }

    fn read(&mut self, sector: u64, len: u32) -> (u32, u8, Vec<u8>) {
        let h = self.header(VIRTIO_BLK_T_IN, sector);
        let (used, status) = self.submit(&[h, (DATA, len, true), Self::status()]);
        let mut buf = vec![0u8; len as usize];
        self.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        (used, status, buf)
    }

    fn write(&mut self, sector: u64, bytes: &[u8]) -> u8 {
        self.mem.write_slice(bytes, GuestAddress(DATA)).unwrap();
        let h = self.header(VIRTIO_BLK_T_OUT, sector);
        self.submit(&[h, (DATA, bytes.len() as u32, false), Self::status()])
            .1
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn read_write_flush_get_id() {
    let mut h = Harness::new(false);
    let (used, status, buf) = h.read(3, 4096);
    assert_eq!((used, status), (4097, OK));
    assert_eq!(buf, h.data[3 * 512..3 * 512 + 4096]);
    let payload = pattern(7, 8192);
    assert_eq!(h.write(100, &payload), OK);
    let (_, status, buf) = h.read(100, 8192);
    assert_eq!((status, buf), (OK, payload));
    let f = h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[f, Harness::status()]), (1, OK));
    let g = h.header(VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(
        h.submit(&[g, (DATA, 20, true), Harness::status()]),
        (21, OK)
    );
    let mut id = [0u8; 20];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..12], b"test-disk-id");
    assert!(h.interrupt.queue.load(Ordering::SeqCst) > 0);
}

#[test]
fn data_split_across_descriptors_and_header_split_too() {
    let mut h = Harness::new(false);
    let _ = h.header(VIRTIO_BLK_T_IN, 10);
    // Header in two pieces, data in three uneven pieces (total 1536), status in its own byte.
    let parts = [
        (HDR, 5, false),
        (HDR + 5, 11, false),
        (DATA, 100, true),
        (DATA + 100, 1000, true),
        (DATA + 1100, 436, true),
        Harness::status(),
    ];
    assert_eq!(h.submit(&parts), (1537, OK));
    let mut buf = vec![0u8; 1536];
    h.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert_eq!(buf, h.data[5120..5120 + 1536]);
    // Status as the last byte of a larger writable descriptor.
    let _ = h.header(VIRTIO_BLK_T_IN, 0);
    let (used, _) = h.submit(&[(HDR, 16, false), (STATUS - 512, 513, true)]);
    assert_eq!(used, 513);
    assert_eq!(h.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
}

#[test]
fn hostile_requests_get_errors_not_panics() {
    let mut h = Harness::new(false);
    // Past the end, overflowing sector, unaligned length, too long.
    assert_eq!(h.read(DISK_SECTORS - 1, 1024).1, IOERR);
    assert_eq!(h.read(u64::MAX - 1, 512).1, IOERR);
    assert_eq!(h.read(0, 1000).1, IOERR);
    // Longer than the request cap (split so every buffer is inside guest memory).
    let hd = h.header(VIRTIO_BLK_T_IN, 0);
    let half = (MAX_REQUEST_BYTES_FOR_TEST / 2) as u32;
    assert_eq!(
        h.submit(&[
            hd,
            (0x40_0000, half, true),
            (0x40_0000, half + 512, true),
            Harness::status()
        ])
        .1,
        IOERR
    );
    // Buffers outside guest memory: refused by the queue layer (device needs reset).
    let hd = h.header(VIRTIO_BLK_T_IN, 0);
    assert!(h
        .try_submit(&[hd, (MEM_SIZE as u64 + 4096, 512, true), Harness::status()])
        .unwrap_err()
        .contains("outside guest memory"));
    let hd = h.header(VIRTIO_BLK_T_OUT, 0);
    assert!(h
        .try_submit(&[hd, (u64::MAX - 100, 512, false), Harness::status()])
        .is_err());
    // Short header.
    let _ = h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(h.submit(&[(HDR, 8, false), Harness::status()]).1, IOERR);
    // Wrong directions: write with a writable data buffer; read with a readable one.
    let hd = h.header(VIRTIO_BLK_T_OUT, 0);
    assert_eq!(
        h.submit(&[hd, (DATA, 512, true), Harness::status()]).1,
        IOERR
    );
    let hd = h.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        h.submit(&[hd, (DATA, 512, false), Harness::status()]).1,
        IOERR
    );
    // Unknown type.
    let hd = h.header(0x77, 0);
    assert_eq!(h.submit(&[hd, Harness::status()]), (1, UNSUPP));
    // Status byte not device-writable: nothing written, used length 0.
    let hd = h.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.submit(&[hd, (STATUS, 1, false)]), (0, 0xff));
    // Readable after writable; status byte outside guest memory.
    let hd = h.header(VIRTIO_BLK_T_IN, 0);
    assert!(h
        .try_submit(&[hd, (DATA, 512, true), (DATA, 512, false), Harness::status()])
        .is_err());
    let hd = h.header(VIRTIO_BLK_T_IN, 0);
    assert!(h.try_submit(&[hd, (MEM_SIZE as u64, 1, true)]).is_err());
    // More data segments than we accept (only reachable through an indirect table, as a
    // direct chain cannot outgrow the ring).
    let hd = h.header(VIRTIO_BLK_T_IN, 0);
    let too_many = std::iter::once(hd)
        .chain((0..u64::from(SEG_MAX) + 10).map(|i| (DATA + i * 512, 512, true)))
        .map(|(addr, len, write)| (GuestAddress(addr), len, write));
    assert_eq!(
        Framing::new(&h.mem, too_many).err(),
        Some(RequestError::TooManyDescriptors)
    );
    // The disk is untouched by all of this and the device still works.
    let (_, status, buf) = h.read(0, 4096);
    assert_eq!((status, &buf[..]), (OK, &h.data[..4096]));
    assert!(!h.interrupt.needs_reset.load(Ordering::SeqCst));
}

const MAX_REQUEST_BYTES_FOR_TEST: u64 = crate::request::MAX_REQUEST_BYTES;

#[test]
fn discard_and_write_zeroes() {
    let mut h = Harness::new(false);
    let seg = |sector: u64, count: u32, flags: u32| {
        let mut s = [0u8; 16];
        s[0..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&count.to_le_bytes());
        s[12..16].copy_from_slice(&flags.to_le_bytes());
        s
    };
    h.mem
        .write_slice(&seg(16, 8, 1), GuestAddress(DATA))
        .unwrap();
    let hd = h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(h.submit(&[hd, (DATA, 16, false), Harness::status()]).1, OK);
    assert_eq!(h.read(16, 4096).2, vec![0u8; 4096]);
    assert_eq!(h.read(24, 512).2, h.data[24 * 512..25 * 512]);
    h.mem
        .write_slice(&seg(40, 8, 0), GuestAddress(DATA))
        .unwrap();
    let hd = h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(h.submit(&[hd, (DATA, 16, false), Harness::status()]).1, OK);
    // Discard with the unmap flag, a segment past the end, a ragged list: errors.
    h.mem
        .write_slice(&seg(40, 8, 1), GuestAddress(DATA))
        .unwrap();
    let hd = h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        h.submit(&[hd, (DATA, 16, false), Harness::status()]).1,
        IOERR
    );
    h.mem
        .write_slice(&seg(DISK_SECTORS - 1, 2, 0), GuestAddress(DATA))
        .unwrap();
    let hd = h.header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    assert_eq!(
        h.submit(&[hd, (DATA, 16, false), Harness::status()]).1,
        IOERR
    );
    let hd = h.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(
        h.submit(&[hd, (DATA, 20, false), Harness::status()]).1,
        IOERR
    );
}

#[test]
fn read_only_disk_refuses_writes_and_advertises_ro() {
    let mut h = Harness::new(true);
    assert_eq!(h.write(0, &[1u8; 512]), IOERR);
    assert_eq!(h.read(0, 512).2, h.data[..512]);
    let dir = TempDir::new("ro");
    std::fs::write(dir.path("d"), vec![0u8; 4096]).unwrap();
    let dev = Block::new(Box::new(RawDisk::open(&dir.path("d"), true).unwrap()), None);
    assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let dir = TempDir::new("cfg");
    std::fs::write(dir.path("d"), vec![0u8; 1 << 20]).unwrap();
    let dev = Block::new(
        Box::new(RawDisk::open(&dir.path("d"), false).unwrap()),
        Some("x"),
    );
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    let mut seg = [0u8; 4];
    dev.read_config(12, &mut seg);
    assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
    let mut past = [0xaau8; 8];
    dev.read_config(58, &mut past);
    assert_eq!(past, [0; 8]);
    dev.read_config(u64::MAX, &mut past);
    assert_eq!(past, [0; 8]);
    assert_ne!(dev.features() & (1 << VIRTIO_F_VERSION_1), 0);
}

#[test]
fn activated_device_serves_requests_on_its_worker_and_resets() {
    let dir = TempDir::new("act");
    std::fs::write(dir.path("d"), pattern(3, 1 << 20)).unwrap();
    let mut dev = Block::new(
        Box::new(RawDisk::open(&dir.path("d"), false).unwrap()),
        None,
    );
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    for _round in 0..2 {
        let vq = MockSplitQueue::new(&mem, 256);
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kick = notify.try_clone().unwrap();
        let interrupt = Arc::new(TestInterrupt::default());
        let q = ActivatedQueue {
            index: 0,
            queue: vq.create_queue::<Queue>().unwrap(),
            notify,
        };
        assert!(matches!(
            dev.activate(mem.clone(), interrupt.clone(), vec![]),
            Err(ActivateError::QueueCount { .. })
        ));
        dev.activate(mem.clone(), interrupt.clone(), vec![q])
            .unwrap();
        let mut h = [0u8; 16];
        h[8..16].copy_from_slice(&2u64.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(HDR, 16, 1, 1)),
            RawDescriptor::from(SplitDescriptor::new(
                DATA,
                512,
                1 | VRING_DESC_F_WRITE as u16,
                2,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                STATUS,
                1,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        vq.add_desc_chains(&descs, 0).unwrap();
        kick.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while vq.used().idx().load() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "worker never completed the request"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
        let mut buf = [0u8; 512];
        mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
        assert_eq!(&buf[..], &pattern(3, 1536)[1024..]);
        dev.reset();
    }
}

/// Random chains (addresses anywhere, random lengths, flags, header bytes) never panic, never
/// stop the device, and always complete with a valid status or used length 0.
#[test]
fn prop_hostile_chains() {
    let h = std::cell::RefCell::new(Harness::new(false));
    let cases = AtomicUsize::new(0);
    let part = (
        prop_oneof![
            Just(HDR),
            Just(DATA),
            Just(STATUS),
            any::<u64>(),
            HDR..(MEM_SIZE as u64 + 8192)
        ],
        prop_oneof![0u32..40, 0u32..70_000, any::<u32>()],
        any::<bool>(),
    );
    let config = ProptestConfig {
        cases: 3000,
        ..ProptestConfig::default()
    };
    proptest!(config, |(parts in proptest::collection::vec(part, 1..10), kind in prop_oneof![0u32..16, any::<u32>()], sector in prop_oneof![0u64..4096, any::<u64>()])| {
        cases.fetch_add(1, Ordering::Relaxed);
        let mut h = h.borrow_mut();
        let _ = h.header(kind, sector);
        let Ok((used, _)) = h.try_submit(&parts) else {
            // Refused by the shared chain validation: the transport resets the device.
            return Ok(());
        };
        if used > 0 {
            let &(addr, len, _) = parts.iter().rev().find(|p| p.2 && p.1 > 0).expect("a status byte was written");
            let status = h.mem.read_obj::<u8>(GuestAddress(addr + u64::from(len) - 1)).unwrap();
            prop_assert!([OK, IOERR, UNSUPP].contains(&status), "used {} status {}", used, status);
        }
        prop_assert!(!h.interrupt.needs_reset.load(Ordering::SeqCst));
    });
    eprintln!("fuzz virtio_blk_request: {} cases", cases.into_inner());
}

/// The hostile-ring property every device passes through its `DeviceQueue`.
#[test]
fn fuzz_block_hostile_rings() {
    let dir = TempDir::new("fuzz");
    std::fs::write(dir.path("d"), pattern(4, 1 << 20)).unwrap();
    let mut dev = Block::new(
        Box::new(RawDisk::open(&dir.path("d"), false).unwrap()),
        None,
    );
    cloudphone_virtio::testing::hostile::fuzz_worker("block_chains", 1000, 1, |a| {
        dev.worker(a).unwrap()
    });
}
