//! Device-model tests for vsock: the test is the guest driver (queues in test memory) and the
//! host programs (Unix sockets next to the device's `uds`).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::packet::*;
use super::*;
use crate::testutil::{guest_memory, interrupt, peek, poke, Buf, TestInterrupt, TestQueue};
use cloudphone_virtio::GuestMemory;

const GUEST_CID: u64 = 3;
const RX_BUFS: u64 = 0x100000;
const TX_BUFS: u64 = 0x400000;
const RX_BUF_LEN: u32 = HDR_LEN as u32 + 4096;

/// A fresh directory for one test's sockets, removed afterwards.
struct SockDir(PathBuf);

impl SockDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cpvs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        SockDir(dir)
    }
    fn uds(&self) -> PathBuf {
        self.0.join("v.sock")
    }
    /// Where the device connects for guest connections to host `port`.
    fn listen_port(&self, port: u32) -> UnixListener {
        UnixListener::bind(format!("{}_{port}", self.uds().display())).unwrap()
    }
}

impl Drop for SockDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Guest<'m> {
    mem: &'m GuestMemory,
    rx: TestQueue<'m>,
    tx: TestQueue<'m>,
    event: TestQueue<'m>,
    irq: Arc<TestInterrupt>,
    dev: Vsock,
    dir: SockDir,
    /// Used rx buffers seen but not yet inspected.
    received: std::collections::VecDeque<(u16, u32)>,
}

fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl<'m> Guest<'m> {
    fn start(mem: &'m GuestMemory) -> Self {
        let dir = SockDir::new();
        let mut dev = Vsock::new(&VsockSpec {
            cid: GUEST_CID,
            uds: dir.uds(),
        })
        .unwrap();
        let (irq, rx, tx, event) = Self::activate(mem, &mut dev, 0);
        Guest {
            mem,
            rx,
            tx,
            event,
            irq,
            dev,
            dir,
            received: Default::default(),
        }
    }

    fn activate(
        mem: &'m GuestMemory,
        dev: &mut Vsock,
        base: u64,
    ) -> (
        Arc<TestInterrupt>,
        TestQueue<'m>,
        TestQueue<'m>,
        TestQueue<'m>,
    ) {
        dev.ack_features(dev.features());
        let rx = TestQueue::new(mem, base, 256);
        let tx = TestQueue::new(mem, base + 0x10000, 256);
        let event = TestQueue::new(mem, base + 0x20000, 8);
        let (irq, dyn_irq) = interrupt();
        dev.activate(
            mem.clone(),
            dyn_irq,
            vec![rx.activated(0), tx.activated(1), event.activated(2)],
        )
        .unwrap();
        (irq, rx, tx, event)
    }

    /// Post `n` rx buffers (each at an address derived from its head index) and kick.
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = RX_BUFS + u64::from(self.rx.next_head()) * 0x2000;
            self.rx.add(&[Buf {
                addr,
                len: RX_BUF_LEN,
                write: true,
            }]);
        }
        self.rx.notify();
    }

    /// Send one packet from the guest and wait until the device consumed it.
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        self.send_raw(&h.encode(), payload);
    }

    fn send_raw(&mut self, header: &[u8], payload: &[u8]) {
        let addr = TX_BUFS;
        poke(self.mem, addr, header);
        poke(self.mem, addr + header.len() as u64, payload);
        let len = (header.len() + payload.len()) as u32;
        let head = self.tx.add_notify(&[Buf {
            addr,
            len,
            write: false,
        }]);
        let used = self.tx.wait_used(1);
        assert_eq!(
            used.len(),
            1,
            "device did not consume the tx packet {head}: {:?}",
            &used[..used.len().min(4)]
        );
    }

    /// The next packet the device wrote into an rx buffer (waits up to 5 s).
    fn recv(&mut self) -> (Header, Vec<u8>) {
        if self.received.is_empty() {
            self.received.extend(self.rx.wait_used(1));
        }
        let (head, len) = self.received.pop_front().expect("no rx packet within 5 s");
        let addr = RX_BUFS + u64::from(head) * 0x2000;
        let h = Header::decode(&peek(self.mem, addr, HDR_LEN).try_into().unwrap());
        assert_eq!(
            len as usize,
            HDR_LEN + h.len as usize,
            "used length matches header"
        );
        assert_eq!(
            (h.src_cid, h.dst_cid, h.type_),
            (HOST_CID, GUEST_CID, TYPE_STREAM)
        );
        (h, peek(self.mem, addr + HDR_LEN as u64, h.len as usize))
    }

    /// Assert the device sends nothing for a while.
    fn expect_silence(&mut self) {
        std::thread::sleep(Duration::from_millis(50));
        self.received.extend(self.rx.wait_used(0));
        assert!(
            self.received.is_empty(),
            "unexpected rx packets {:?}",
            self.received
        );
    }

    /// Guest connects to host `port` which is listening; returns the host's stream.
    fn connect(&mut self, listener: &UnixListener, src_port: u32, port: u32) -> UnixStream {
        self.send(hdr(OP_REQUEST, src_port, port), &[]);
        let (h, _) = self.recv();
        assert_eq!(
            (h.op, h.src_port, h.dst_port),
            (OP_RESPONSE, port, src_port)
        );
        assert_eq!(h.buf_alloc, super::conn::CONN_BUF_ALLOC);
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }

    /// The next packet must be an RST for (host `port`, guest `src_port`).
    fn expect_rst(&mut self, src_port: u32, port: u32) {
        let (h, _) = self.recv();
        assert_eq!(
            (h.op, h.src_port, h.dst_port),
            (OP_RST, port, src_port),
            "{h:?}"
        );
    }
}

fn read_exactly(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    stream.read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn config_space_holds_the_cid() {
    let mem = guest_memory();
    let g = Guest::start(&mem);
    let mut config = [0xffu8; 12];
    g.dev.read_config(0, &mut config);
    assert_eq!(config, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(g.dev.device_type(), 19);
    assert_eq!(g.dev.queue_max_sizes().len(), 3);
}

#[test]
fn guest_connects_to_host_port_and_streams_both_ways() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(1234);
    g.post_rx(8);
    let mut host = g.connect(&listener, 5000, 1234);

    g.send(hdr(OP_RW, 5000, 1234), b"hello host");
    assert_eq!(read_exactly(&mut host, 10), b"hello host");

    host.write_all(b"hello guest").unwrap();
    let (h, data) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RW, 1234, 5000));
    assert_eq!(data, b"hello guest");
    assert_eq!(h.fwd_cnt, 10, "our fwd_cnt counts bytes the host took");

    // Guest closes both ways: the host sees EOF and the guest gets the final RST.
    let mut shutdown = hdr(OP_SHUTDOWN, 5000, 1234);
    shutdown.flags = SHUTDOWN_BOTH;
    g.send(shutdown, &[]);
    g.expect_rst(5000, 1234);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(!g.irq.needs_reset());
}

#[test]
fn host_connect_line_reaches_guest_port() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    g.post_rx(8);
    let mut host = UnixStream::connect(g.dir.uds()).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Early payload right after the line must not be lost.
    host.write_all(
        b"CONNECT 5555
early",
    )
    .unwrap();
    let (req, _) = g.recv();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 5555));
    assert!(
        req.src_port >= 1 << 30,
        "host ports are allocated from 2^30"
    );

    let host_port = req.src_port;
    g.send(hdr(OP_RESPONSE, 5555, host_port), &[]);
    let mut ok = [0u8; 32];
    let expect = format!("OK {host_port}\n");
    host.read_exact(&mut ok[..expect.len()]).unwrap();
    assert_eq!(&ok[..expect.len()], expect.as_bytes());

    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"early"[..]));
    g.send(hdr(OP_RW, 5555, host_port), b"pong");
    assert_eq!(read_exactly(&mut host, 4), b"pong");

    // Host closes entirely: the guest is told neither side will send again.
    drop(host);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    g.send(hdr(OP_RST, 5555, host_port), &[]);
    g.expect_silence();
}

#[test]
fn host_half_close_keeps_the_reply_path_open() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(7);
    g.post_rx(8);
    let mut host = g.connect(&listener, 6000, 7);
    host.write_all(b"request").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"request"[..]));
    let (h, _) = g.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    g.send(hdr(OP_RW, 6000, 7), b"reply");
    assert_eq!(read_exactly(&mut host, 5), b"reply");
}

#[test]
fn host_data_respects_guest_credit() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(80);
    g.post_rx(16);
    let mut req = hdr(OP_REQUEST, 4000, 80);
    req.buf_alloc = 4096;
    req.len = 0;
    g.send_raw(&req.encode(), &[]);
    let (h, _) = g.recv();
    assert_eq!(h.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    let data: Vec<u8> = (0..10000u32).map(|i| (i % 251) as u8).collect();
    host.write_all(&data).unwrap();

    let mut got = Vec::new();
    while got.len() < 4096 {
        let (h, chunk) = g.recv();
        assert_eq!(h.op, OP_RW);
        got.extend(chunk);
    }
    assert_eq!(
        got.len(),
        4096,
        "never more than the guest's buf_alloc in flight"
    );
    g.expect_silence();

    // The guest consumed it all: a credit update releases the rest.
    let mut update = hdr(OP_CREDIT_UPDATE, 4000, 80);
    update.buf_alloc = 4096;
    update.fwd_cnt = 4096;
    g.send(update, &[]);
    while got.len() < 8192 {
        got.extend(g.recv().1);
    }
    assert_eq!(got.len(), 8192);
    update.fwd_cnt = 8192;
    g.send(update, &[]);
    while got.len() < data.len() {
        got.extend(g.recv().1);
    }
    assert_eq!(got, data);
}

#[test]
fn credit_request_gets_a_credit_update() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(81);
    g.post_rx(8);
    let mut host = g.connect(&listener, 4001, 81);
    g.send(hdr(OP_RW, 4001, 81), &[9; 100]);
    assert_eq!(read_exactly(&mut host, 100), vec![9; 100]);
    g.send(hdr(OP_CREDIT_REQUEST, 4001, 81), &[]);
    let (h, _) = g.recv();
    assert_eq!(
        (h.op, h.fwd_cnt, h.buf_alloc),
        (OP_CREDIT_UPDATE, 100, super::conn::CONN_BUF_ALLOC)
    );
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(82);
    g.post_rx(8);
    let _host = g.connect(&listener, 4002, 82); // never reads
    let chunk = vec![7u8; 60000];
    // Our buffer (256 KiB) plus the socket buffer cannot hold 1 MiB.
    let mut addr = 0x800000;
    for _ in 0..18 {
        let mut h = hdr(OP_RW, 4002, 82);
        h.len = chunk.len() as u32;
        poke(&mem, addr, &h.encode());
        poke(&mem, addr + HDR_LEN as u64, &chunk);
        g.tx.add(&[Buf {
            addr,
            len: (HDR_LEN + chunk.len()) as u32,
            write: false,
        }]);
        addr += 0x10000;
    }
    g.tx.notify();
    assert_eq!(g.tx.wait_used(18).len(), 18);
    // Credit updates may come first (the host socket took some data), then the RST.
    loop {
        let (h, _) = g.recv();
        if h.op == OP_RST {
            assert_eq!((h.src_port, h.dst_port), (82, 4002));
            break;
        }
        assert_eq!(h.op, OP_CREDIT_UPDATE, "{h:?}");
    }
    assert!(!g.irq.needs_reset());
}

#[test]
fn hostile_packets_get_rst_and_never_break_the_device() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    g.post_rx(32);
    // Wrong source CID.
    let mut h = hdr(OP_REQUEST, 1, 2);
    h.src_cid = 9;
    g.send(h, &[]);
    g.expect_rst(1, 2);
    // Wrong destination CID.
    let mut h = hdr(OP_REQUEST, 1, 2);
    h.dst_cid = 7;
    g.send(h, &[]);
    g.expect_rst(1, 2);
    // Seqpacket type is not offered.
    let mut h = hdr(OP_REQUEST, 1, 2);
    h.type_ = 2;
    g.send(h, &[]);
    g.expect_rst(1, 2);
    // Data, shutdown, response, credit for connections that do not exist.
    for op in [
        OP_RW,
        OP_SHUTDOWN,
        OP_RESPONSE,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        0,
        8,
        0xffff,
    ] {
        g.send(hdr(op, 10, 20), b"x");
        g.expect_rst(10, 20);
    }
    // RST for nothing: silently ignored.
    g.send(hdr(OP_RST, 10, 20), &[]);
    g.expect_silence();
    // Nobody listens on the host port.
    g.send(hdr(OP_REQUEST, 11, 4444), &[]);
    g.expect_rst(11, 4444);
    // Length field larger than the buffer / than 64 KiB.
    let mut h = hdr(OP_RW, 12, 21);
    h.len = 1000;
    g.send_raw(&h.encode(), b"short");
    g.expect_rst(12, 21);
    h.len = u32::MAX;
    g.send_raw(&h.encode(), &[]);
    g.expect_rst(12, 21);
    // Shorter than a header: dropped without a reply.
    g.send_raw(&[1, 2, 3], &[]);
    g.expect_silence();

    // An unknown op on a live connection resets it.
    let listener = g.dir.listen_port(30);
    let mut host = g.connect(&listener, 13, 30);
    g.send(hdr(99, 13, 30), &[]);
    g.expect_rst(13, 30);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    // A duplicate REQUEST for a live connection resets it too.
    let mut host = g.connect(&listener, 14, 30);
    g.send(hdr(OP_REQUEST, 14, 30), &[]);
    g.expect_rst(14, 30);
    host.read_to_end(&mut rest).unwrap();
    assert!(!g.irq.needs_reset());
}

#[test]
fn bad_connect_lines_close_the_host_stream() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    g.post_rx(8);
    for line in [
        &b"HELLO
"[..],
        b"CONNECT x
",
        b"CONNECT 99999999999
",
        &[b'A'; 40][..],
    ] {
        let mut host = UnixStream::connect(g.dir.uds()).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(line).unwrap();
        let mut buf = [0u8; 8];
        // Closed with our unread bytes in it: EOF or ECONNRESET, both mean closed.
        match host.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!(
                "stream not closed for {:?}: {other:?}",
                String::from_utf8_lossy(line)
            ),
        }
    }
    g.expect_silence();
}

#[test]
fn guest_refusing_a_host_connect_closes_the_host_stream() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    g.post_rx(8);
    let mut host = UnixStream::connect(g.dir.uds()).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(
        b"CONNECT 9
",
    )
    .unwrap();
    let (req, _) = g.recv();
    g.send(hdr(OP_RST, 9, req.src_port), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
}

#[test]
fn connection_limit_answers_rst() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(40);
    listener.set_nonblocking(true).unwrap();
    let mut hosts = Vec::new();
    for i in 0..super::muxer::MAX_CONNECTIONS as u32 {
        g.post_rx(1);
        g.send(hdr(OP_REQUEST, 100 + i, 40), &[]);
        let (h, _) = g.recv();
        assert_eq!(h.op, OP_RESPONSE, "connection {i}");
        // Accept as we go so the listen backlog never fills.
        while let Ok((s, _)) = listener.accept() {
            hosts.push(s);
        }
    }
    g.post_rx(1);
    g.send(hdr(OP_REQUEST, 99, 40), &[]);
    g.expect_rst(99, 40);
}

#[test]
fn reactivation_announces_transport_reset() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    g.event.add_notify(&[Buf {
        addr: 0x900000,
        len: 4,
        write: true,
    }]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        g.event.wait_used(0),
        vec![],
        "no event on the first activation"
    );

    let listener = g.dir.listen_port(50);
    g.post_rx(4);
    let mut host = g.connect(&listener, 7000, 50);
    g.dev.reset();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap(); // reset closed the host stream

    let (_irq, mut rx, _tx, mut event) = Guest::activate(&mem, &mut g.dev, 0xa00000);
    expect_transport_reset(&mem, &mut event);
    rx.add_notify(&[Buf {
        addr: RX_BUFS,
        len: RX_BUF_LEN,
        write: true,
    }]);
}

/// A device restored from a snapshot saves no connections and, once the driver gives it an
/// event buffer, sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET so the guest drops its sockets.
#[test]
fn restored_device_announces_transport_reset() {
    let mem = guest_memory();
    let mut g = Guest::start(&mem);
    let listener = g.dir.listen_port(51);
    g.post_rx(4);
    let _host = g.connect(&listener, 7001, 51);
    let blob = g.dev.save_state().unwrap();
    assert_eq!(blob.device, None);
    assert_eq!(blob.common.queues.len(), 3);
    g.dev.reset();

    let dir = SockDir::new();
    let mut dev = Vsock::new(&VsockSpec {
        cid: GUEST_CID,
        uds: dir.uds(),
    })
    .unwrap();
    dev.restore_state(&blob).unwrap();
    let (_irq, _rx, _tx, mut event) = Guest::activate(&mem, &mut dev, 0xa00000);
    expect_transport_reset(&mem, &mut event);
}

/// Give the device one event buffer and check it comes back holding
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (id 0).
fn expect_transport_reset(mem: &GuestMemory, event: &mut TestQueue) {
    poke(mem, 0x900000, &[0xff; 4]);
    event.add_notify(&[Buf {
        addr: 0x900000,
        len: 4,
        write: true,
    }]);
    assert_eq!(event.wait_used(1), vec![(0, 4)]);
    assert_eq!(
        peek(mem, 0x900000, 4),
        vec![0, 0, 0, 0],
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
}

#[test]
fn fuzz_vsock_tx_packets() {
    // Random headers (ops, CIDs, ports, lengths, flags) and payload sizes: the device answers or
    // ignores each, never panics and never needs a reset.
    let mem = guest_memory();
    let guest = std::cell::RefCell::new(Guest::start(&mem));
    let listener = guest.borrow().dir.listen_port(1);
    listener.set_nonblocking(true).unwrap();
    guest.borrow_mut().post_rx(32);
    let strategy = (
        0u16..10,
        2u64..5,
        0u64..4,
        0u32..3,
        0u32..3,
        0u32..5000,
        0usize..3000,
        0u32..4,
        proptest::num::u32::ANY,
    );
    crate::testutil::fuzz(
        "vsock_tx_packet",
        1024,
        strategy,
        |(op, src_cid, dst_cid, sport, dport, len, payload, flags, credit)| {
            let mut g = guest.borrow_mut();
            let h = Header {
                src_cid,
                dst_cid,
                src_port: sport,
                dst_port: dport,
                len,
                type_: TYPE_STREAM,
                op,
                flags,
                buf_alloc: credit,
                fwd_cnt: credit / 2,
            };
            g.send_raw(&h.encode(), &vec![0x5a; payload]);
            while let Ok((mut s, _)) = listener.accept() {
                s.set_nonblocking(true).unwrap();
                let _ = s.read(&mut [0u8; 8192]);
            }
            proptest::prop_assert!(!g.irq.needs_reset());
            // Take whatever the device replied and give the buffers back, so 32 stay posted.
            let replies = g.rx.wait_used(0).len();
            g.post_rx(replies);
            Ok(())
        },
    );
    assert!(!guest.borrow().irq.needs_reset());
}

/// The hostile-ring property every device passes through its `DeviceQueue`, on rx, tx and
/// event queues.
#[test]
fn fuzz_vsock_hostile_rings() {
    let dir = SockDir::new();
    let mut dev = Vsock::new(&VsockSpec {
        cid: GUEST_CID,
        uds: dir.uds(),
    })
    .unwrap();
    dev.ack_features(dev.features());
    cloudphone_virtio::testing::hostile::fuzz_worker("vsock_chains", 1000, 3, |a| {
        dev.worker(a).unwrap()
    });
}
