//! Device-model tests: the test plays the guest driver on queues in test memory, a datagram
//! socket pair (or a real TAP in a private network namespace) plays the network.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::testutil::{
    guest_memory, interrupt, peek, poke, Buf, DgramBackend, TestInterrupt, TestQueue,
};
use cloudphone_virtio::GuestMemory;

const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x10000;
const BUFS: u64 = 0x100000;
const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

struct Rig<'m> {
    net: Net,
    rx: TestQueue<'m>,
    tx: TestQueue<'m>,
    wire: UnixDatagram,
    irq: Arc<TestInterrupt>,
    backend: Arc<DgramBackend>,
}

fn rig(mem: &GuestMemory, extra_features: u64) -> Rig<'_> {
    let (backend, wire) = DgramBackend::pair();
    let mut net = Net::with_backend(backend.clone(), MAC);
    let base = 1u64 << VIRTIO_F_VERSION_1 | 1u64 << VIRTIO_RING_F_EVENT_IDX;
    net.ack_features(base | extra_features);
    let rx = TestQueue::new(mem, RX_RING, 256);
    let tx = TestQueue::new(mem, TX_RING, 256);
    let (irq, dyn_irq) = interrupt();
    net.activate(mem.clone(), dyn_irq, vec![rx.activated(0), tx.activated(1)])
        .unwrap();
    Rig {
        net,
        rx,
        tx,
        wire,
        irq,
        backend,
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..VNET_HDR_LEN].fill(0);
    f
}

fn wbuf(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

fn rbuf(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

#[test]
fn config_space_has_mac_and_link_up() {
    let mem = guest_memory();
    let r = rig(&mem, 0);
    let mut config = [0xffu8; 12];
    r.net.read_config(0, &mut config);
    assert_eq!(&config[..6], &MAC.0);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_eq!(&config[8..], &[0; 4], "past the end reads as zero");
    let mut one = [0u8; 1];
    r.net.read_config(u64::MAX, &mut one);
    assert_eq!(one, [0]);
    assert_eq!(
        r.net.features() & (1 << VIRTIO_NET_F_GUEST_UFO | 1 << VIRTIO_NET_F_HOST_UFO),
        0
    );
    assert_ne!(r.net.features() & 1 << VIRTIO_F_VERSION_1, 0);
}

#[test]
fn tx_frames_reach_the_backend_intact() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    let f = frame(1000, 1);
    // Header and payload in separate descriptors, as Linux sends them.
    poke(&mem, BUFS, &f[..VNET_HDR_LEN]);
    poke(&mem, BUFS + 0x1000, &f[VNET_HDR_LEN..]);
    let head = r.tx.add_notify(&[rbuf(BUFS, 12), rbuf(BUFS + 0x1000, 988)]);
    let mut got = vec![0; 2000];
    let n = r.wire.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(r.tx.wait_used(1), vec![(head, 0)]);
    assert!(r
        .irq
        .causes
        .lock()
        .unwrap()
        .contains(&InterruptCause::Queue(1)));
}

use cloudphone_virtio::InterruptCause;

#[test]
fn rx_frames_reach_the_guest_with_num_buffers_one() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    let head = r.rx.add_notify(&[wbuf(BUFS, 2048)]);
    let f = frame(600, 2);
    r.wire.send(&f).unwrap();
    assert_eq!(r.rx.wait_used(1), vec![(head, 600)]);
    let got = peek(&mem, BUFS, 600);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &f[12..]);
    assert!(r
        .irq
        .causes
        .lock()
        .unwrap()
        .contains(&InterruptCause::Queue(0)));
}

#[test]
fn rx_waits_for_guest_buffers_then_delivers_in_order() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    for seed in 0..3 {
        r.wire.send(&frame(100 + seed as usize, seed)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(r.rx.wait_used(0).is_empty());
    let heads: Vec<u16> = (0..3)
        .map(|i| r.rx.add(&[wbuf(BUFS + i * 0x1000, 2048)]))
        .collect();
    r.rx.notify();
    let used = r.rx.wait_used(3);
    assert_eq!(
        used,
        vec![(heads[0], 100), (heads[1], 101), (heads[2], 102)]
    );
    for seed in 0..3u8 {
        let got = peek(&mem, BUFS + seed as u64 * 0x1000, 100 + seed as usize);
        assert_eq!(&got[12..], &frame(100 + seed as usize, seed)[12..]);
    }
    assert!(!r.irq.needs_reset());
}

#[test]
fn mergeable_rx_buffers_split_a_large_frame() {
    let mem = guest_memory();
    let mut r = rig(&mem, 1 << VIRTIO_NET_F_MRG_RXBUF);
    let heads: Vec<u16> = (0..5)
        .map(|i| r.rx.add(&[wbuf(BUFS + i * 0x1000, 1500)]))
        .collect();
    r.rx.notify();
    let f = frame(5000, 3);
    r.wire.send(&f).unwrap();
    let used = r.rx.wait_used(4);
    assert_eq!(
        used,
        vec![
            (heads[0], 1500),
            (heads[1], 1500),
            (heads[2], 1500),
            (heads[3], 500)
        ]
    );
    let mut got = Vec::new();
    for (i, (_, len)) in used.iter().enumerate() {
        got.extend(peek(&mem, BUFS + i as u64 * 0x1000, *len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4);
    assert_eq!(&got[12..], &f[12..]);
}

#[test]
fn mergeable_rx_holds_a_frame_until_enough_buffers() {
    let mem = guest_memory();
    let mut r = rig(&mem, 1 << VIRTIO_NET_F_MRG_RXBUF);
    let first = r.rx.add_notify(&[wbuf(BUFS, 1500)]);
    r.wire.send(&frame(2500, 4)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        r.rx.wait_used(0).is_empty(),
        "a partial frame must not be delivered"
    );
    let second = r.rx.add_notify(&[wbuf(BUFS + 0x1000, 1500)]);
    assert_eq!(r.rx.wait_used(2), vec![(first, 1500), (second, 1000)]);
}

#[test]
fn oversized_frame_without_mergeable_buffers_is_dropped_and_buffer_reused() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    let head = r.rx.add_notify(&[wbuf(BUFS, 1526)]);
    r.wire.send(&frame(4000, 5)).unwrap();
    r.wire.send(&frame(64, 6)).unwrap();
    assert_eq!(r.rx.wait_used(1), vec![(head, 64)]);
    assert_eq!(&peek(&mem, BUFS + 12, 52)[..], &frame(64, 6)[12..]);
}

#[test]
fn hostile_tx_lengths_are_dropped_not_sent() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    // Shorter than the vnet header, and longer than the 64 KiB cap.
    let short = r.tx.add(&[rbuf(BUFS, 4)]);
    let huge = r.tx.add(&[rbuf(BUFS, MAX_BUFFER_LEN as u32 + 1)]);
    let ok = r.tx.add(&[rbuf(BUFS, 60)]);
    r.tx.notify();
    assert_eq!(r.tx.wait_used(3), vec![(short, 0), (huge, 0), (ok, 0)]);
    let mut got = vec![0; MAX_BUFFER_LEN + 10];
    assert_eq!(
        r.wire.recv(&mut got).unwrap(),
        60,
        "only the valid frame is sent"
    );
    assert!(!r.irq.needs_reset());
}

#[test]
fn descriptor_outside_guest_memory_marks_needs_reset() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    r.tx.add_notify(&[rbuf((16 << 20) - 8, 64)]);
    for _ in 0..500 {
        if r.irq.needs_reset() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(r.irq.needs_reset());
    // The device can be reset and used again.
    r.net.reset();
    assert!(r.wire.set_nonblocking(true).is_ok());
}

#[test]
fn reset_then_reactivate_moves_frames_again() {
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    r.net.reset();
    let rx = TestQueue::new(&mem, 0x20000, 64);
    let mut tx = TestQueue::new(&mem, 0x30000, 64);
    r.net
        .ack_features(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_GUEST_CSUM);
    let (_irq, dyn_irq) = interrupt();
    r.net
        .activate(mem.clone(), dyn_irq, vec![rx.activated(0), tx.activated(1)])
        .unwrap();
    assert_eq!(
        *r.backend.offload.lock().unwrap(),
        Some(1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_GUEST_CSUM)
    );
    poke(&mem, BUFS, &frame(80, 9));
    tx.add_notify(&[rbuf(BUFS, 80)]);
    let mut got = vec![0; 200];
    assert_eq!(r.wire.recv(&mut got).unwrap(), 80);
    let (_irq, dyn_irq) = interrupt();
    let err = r.net.activate(mem.clone(), dyn_irq, vec![rx.activated(0)]);
    assert!(matches!(
        err,
        Err(ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
}

#[test]
fn fuzz_net_tx_chains() {
    // Random chains (lengths, directions, addresses near the end of memory): the device either
    // sends/drops the frame or flags needs-reset; it never panics or hangs.
    let strategy =
        proptest::collection::vec((0u64..(17 << 20), 0u32..70000, proptest::bool::ANY), 1..4);
    crate::testutil::fuzz("net_tx_chain", 256, strategy, |bufs| {
        let mem = guest_memory();
        let mut r = rig(&mem, 0);
        let bufs: Vec<Buf> = bufs
            .into_iter()
            .map(|(addr, len, write)| Buf { addr, len, write })
            .collect();
        r.tx.add_notify(&bufs);
        let irq = r.irq.clone();
        let used = r.tx.wait_used_unless(1, &|| irq.needs_reset());
        proptest::prop_assert!(used.len() == 1 || r.irq.needs_reset());
        Ok(())
    });
}

/// A network namespace made for one test, deleted when dropped.
struct NetNs(String);

impl NetNs {
    fn create(name: String) -> Option<Self> {
        let ok = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .ok()?
            .success();
        ok.then_some(NetNs(name))
    }
    fn ip(&self, args: &[&str]) {
        let status = std::process::Command::new("ip")
            .arg("-n")
            .arg(&self.0)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args:?} failed", self.0);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// Open a TAP inside `ns` (the TAP is created in the namespace of the opening thread).
fn tap_in(ns: &NetNs, name: &'static str) -> Tap {
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let ns_file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd only changes this short-lived thread.
        assert_eq!(
            unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        Tap::open(name).unwrap()
    })
    .join()
    .unwrap()
}

fn arp_request(src_mac: MacAddr, src_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend([0xff; 6]);
    f.extend(src_mac.0);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(src_mac.0);
    f.extend(src_ip);
    f.extend([0; 6]);
    f.extend(target_ip);
    f
}

#[test]
fn real_tap_in_a_namespace_answers_arp() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP real_tap_in_a_namespace_answers_arp: needs root and /dev/net/tun");
        return;
    }
    let Some(ns) = NetNs::create(format!("cpnet-t{}", std::process::id())) else {
        eprintln!("SKIP real_tap_in_a_namespace_answers_arp: `ip netns add` failed");
        return;
    };
    let tap = tap_in(&ns, "cptap0");
    assert_eq!(tap.name(), "cptap0");
    ns.ip(&["addr", "add", "10.213.0.1/24", "dev", "cptap0"]);
    ns.ip(&["link", "set", "cptap0", "up"]);

    let mem = guest_memory();
    let mut net = Net::with_backend(Arc::new(tap), MAC);
    // Everything a Linux guest negotiates, so TUNSETOFFLOAD with TSO is exercised for real.
    net.ack_features(net.features());
    let mut rx = TestQueue::new(&mem, RX_RING, 256);
    let mut tx = TestQueue::new(&mem, TX_RING, 256);
    let (_irq, dyn_irq) = interrupt();
    net.activate(mem.clone(), dyn_irq, vec![rx.activated(0), tx.activated(1)])
        .unwrap();
    for i in 0..64 {
        rx.add(&[wbuf(BUFS + i * 0x1000, 2048)]);
    }
    rx.notify();

    let request = arp_request(MAC, [10, 213, 0, 2], [10, 213, 0, 1]);
    poke(&mem, 0x800000, &request);
    tx.add_notify(&[rbuf(0x800000, request.len() as u32)]);
    assert_eq!(tx.wait_used(1).len(), 1);

    // The kernel answers on the TAP; other chatter (IPv6 router solicitations) may come first.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut all = Vec::new();
    let reply = loop {
        all.extend(rx.wait_used(1));
        let found = all.iter().find_map(|&(head, len)| {
            let f = peek(&mem, BUFS + head as u64 * 0x1000, len as usize);
            let eth = &f[VNET_HDR_LEN..];
            (eth.len() >= 42 && eth[12..14] == [0x08, 0x06] && eth[20..22] == [0, 2])
                .then(|| eth.to_vec())
        });
        if let Some(reply) = found {
            break reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ARP reply from the TAP; got {all:?}"
        );
    };
    assert_eq!(&reply[0..6], &MAC.0, "reply addressed to the guest MAC");
    assert_eq!(
        &reply[28..32],
        &[10, 213, 0, 1],
        "sender is the namespace's address"
    );
    assert_eq!(&reply[32..38], &MAC.0);
    net.reset();
}

/// A frame's bytes as the guest sees them across the used buffers `used` (buffer `i` of the
/// test at `BUFS + i * stride`), header included.
fn gather_used(mem: &GuestMemory, used: &[(u16, u32)], first: u64, stride: u64) -> Vec<u8> {
    let mut got = Vec::new();
    for (i, &(_, len)) in used.iter().enumerate() {
        got.extend(peek(mem, BUFS + (first + i as u64) * stride, len as usize));
    }
    got
}

#[test]
fn mergeable_rx_reads_frames_straight_into_held_buffers() {
    // Enough buffers for any frame: frames go from the backend into guest memory directly.
    let mem = guest_memory();
    let mut r = rig(&mem, 1 << VIRTIO_NET_F_MRG_RXBUF);
    let heads: Vec<u16> = (0..40)
        .map(|i| r.rx.add(&[wbuf(BUFS + i * 0x1000, 2048)]))
        .collect();
    r.rx.notify();
    let (big, small) = (frame(5000, 7), frame(100, 8));
    r.wire.send(&big).unwrap();
    r.wire.send(&small).unwrap();
    let used = r.rx.wait_used(4);
    assert_eq!(
        used,
        vec![
            (heads[0], 2048),
            (heads[1], 2048),
            (heads[2], 904),
            (heads[3], 100)
        ]
    );
    let got = gather_used(&mem, &used[..3], 0, 0x1000);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[12..], &big[12..]);
    let got = gather_used(&mem, &used[3..], 3, 0x1000);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &small[12..]);
    assert!(!r.irq.needs_reset());
}

#[test]
fn big_rx_chains_without_mergeable_buffers_take_frames_directly() {
    // What Linux posts when it accepts TSO without mergeable buffers: page-sized descriptors
    // chained to more than 64 KiB.
    let mem = guest_memory();
    let mut r = rig(&mem, 0);
    let pages = |chain: u64| -> Vec<Buf> {
        (0..17)
            .map(|p| wbuf(BUFS + (chain * 17 + p) * 0x1000, 0x1000))
            .collect()
    };
    let first = r.rx.add(&pages(0));
    let second = r.rx.add(&pages(1));
    r.rx.notify();
    let (big, small) = (frame(60000, 9), frame(70, 10));
    r.wire.send(&big).unwrap();
    r.wire.send(&small).unwrap();
    assert_eq!(r.rx.wait_used(2), vec![(first, 60000), (second, 70)]);
    let got = peek(&mem, BUFS, 60000);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1);
    assert_eq!(&got[12..], &big[12..]);
    assert_eq!(&peek(&mem, BUFS + 17 * 0x1000 + 12, 58)[..], &small[12..]);
}

#[test]
fn rx_chain_too_small_for_a_header_is_returned_unused() {
    let mem = guest_memory();
    let mut r = rig(&mem, 1 << VIRTIO_NET_F_MRG_RXBUF);
    let tiny = r.rx.add(&[wbuf(BUFS, 8)]);
    let ok = r.rx.add_notify(&[wbuf(BUFS + 0x1000, 2048)]);
    let f = frame(200, 11);
    r.wire.send(&f).unwrap();
    assert_eq!(r.rx.wait_used(2), vec![(tiny, 0), (ok, 200)]);
    assert_eq!(&peek(&mem, BUFS + 0x1000 + 12, 188)[..], &f[12..]);
}

/// The hostile-ring property every device passes through its `DeviceQueue`, on rx and tx.
#[test]
fn fuzz_net_hostile_rings() {
    let (backend, _wire) = DgramBackend::pair();
    let mut net = Net::with_backend(backend, MAC);
    net.ack_features(net.features());
    cloudphone_virtio::testing::hostile::fuzz_worker("net_chains", 1000, 2, |a| {
        net.worker(a).unwrap()
    });
}
