//! Console tests through the real virtio-pci transport: virtio-drivers' console driver for
//! hvc0, and a hand-written multiport driver (virtio-drivers has no MULTIPORT) built from
//! virtio-drivers' `VirtQueue` for the control protocol.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, Transport};

use super::control::{
    ControlMsg, CONSOLE_PORT, DEVICE_ADD, DEVICE_READY, PORT_NAME, PORT_OPEN, PORT_READY,
};
use super::*;
use crate::testing::{run_with_timeout, TestHal, TestHarness, TestTransport};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh path under the system temp dir for this test process.
fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("cp-console-{}-{tag}-{n}", std::process::id()))
}

fn port(backend: PortBackend, name: Option<&str>, console: bool) -> PortConfig {
    PortConfig {
        backend,
        name: name.map(str::to_string),
        console,
    }
}

fn connect(path: &PathBuf) -> UnixStream {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

fn read_exact_from(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn hvc0_socket_both_directions_with_virtio_drivers() {
    let path = temp_path("hvc0");
    let dev = Console::new(&[port(PortBackend::Socket(path.clone()), None, true)]).unwrap();
    let h = TestHarness::new(Box::new(dev)).unwrap();
    let mut client = connect(&path);
    let transport = h.transport();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let guest = std::thread::spawn(move || {
        let mut console = VirtIOConsole::<TestHal, _>::new(transport).unwrap();
        console.send_bytes(b"hello from hvc0\n").unwrap();
        rx.recv().unwrap(); // wait until the host wrote its line
        let mut got = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < 5 && Instant::now() < deadline {
            match console.recv(true).unwrap() {
                Some(b) => got.push(b),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        got
    });
    assert_eq!(read_exact_from(&mut client, 16), b"hello from hvc0\n");
    client.write_all(b"ls -l").unwrap();
    tx.send(()).unwrap();
    assert_eq!(guest.join().unwrap(), b"ls -l");
    assert!(!h.needs_reset());
    let _ = std::fs::remove_file(&path);
}

/// Snapshot/restore under virtio-drivers' hvc0 driver: the restored console listens on the
/// same socket path, and the same driver instance sends and receives through it.
#[test]
fn hvc0_driver_continues_after_snapshot_restore() {
    let path = temp_path("hvc0-snap");
    let ports = [port(PortBackend::Socket(path.clone()), None, true)];
    let h = TestHarness::new(Box::new(Console::new(&ports).unwrap())).unwrap();
    let mut client = connect(&path);
    let transport = h.transport();
    let console = run_with_timeout(TIMEOUT, move || {
        let mut console = VirtIOConsole::<TestHal, _>::new(transport).unwrap();
        console.send_bytes(b"before\n").unwrap();
        console
    });
    assert_eq!(read_exact_from(&mut client, 7), b"before\n");
    h.snapshot_restore(|| Box::new(Console::new(&ports).unwrap()))
        .unwrap();
    let mut client = connect(&path);
    client.write_all(b"echo").unwrap();
    let got = run_with_timeout(TIMEOUT, move || {
        let mut console = console;
        let mut got = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < 4 && Instant::now() < deadline {
            match console.recv(true).unwrap() {
                Some(b) => got.push(b),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        console.send_bytes(&got).unwrap();
        got
    });
    assert_eq!(got, b"echo");
    assert_eq!(read_exact_from(&mut client, 4), b"echo");
    assert!(!h.needs_reset());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn file_backend_appends_and_emergency_write() {
    let path = temp_path("file");
    std::fs::write(&path, b"previous run\n").unwrap();
    let dev = Console::new(&[port(PortBackend::File(path.clone()), None, true)]).unwrap();
    let h = TestHarness::new(Box::new(dev)).unwrap();
    let transport = h.transport();
    run_with_timeout(TIMEOUT, move || {
        let mut console = VirtIOConsole::<TestHal, _>::new(transport).unwrap();
        console.send_bytes(b"boot ok\n").unwrap();
        console.emergency_write(b'!').unwrap();
    });
    assert_eq!(std::fs::read(&path).unwrap(), b"previous run\nboot ok\n!");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn construction_errors_name_the_port() {
    assert!(matches!(Console::new(&[]), Err(ConsoleError::PortCount(0))));
    let not_a_socket = temp_path("regular");
    std::fs::write(&not_a_socket, b"keep me").unwrap();
    let err = Console::new(&[
        port(PortBackend::None, None, true),
        port(PortBackend::Socket(not_a_socket.clone()), None, false),
    ])
    .err()
    .unwrap();
    assert!(err.to_string().contains("console port 1"), "{err}");
    assert_eq!(std::fs::read(&not_a_socket).unwrap(), b"keep me");
    let _ = std::fs::remove_file(&not_a_socket);
}

/// A minimal multiport guest driver over the real transport.
struct MultiportDriver {
    t: TestTransport,
    queues: Vec<VirtQueue<TestHal, 16>>,
}

impl MultiportDriver {
    fn new(mut t: TestTransport, ports: usize) -> Self {
        t.set_status(DeviceStatus::empty());
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = t.read_device_features();
        assert_ne!(offered & VIRTIO_CONSOLE_F_MULTIPORT, 0);
        let event_idx = 1 << VIRTIO_RING_F_EVENT_IDX;
        t.write_driver_features((1 << 32) | VIRTIO_CONSOLE_F_MULTIPORT | event_idx);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        assert!(t.get_status().contains(DeviceStatus::FEATURES_OK));
        let queues = (0..(2 * ports + 2) as u16)
            .map(|i| VirtQueue::new(&mut t, i, false, true).unwrap())
            .collect();
        t.finish_init();
        Self { t, queues }
    }

    /// Send `data` on queue `q` and wait for the device to consume it.
    fn send(&mut self, q: usize, data: &[u8]) {
        self.queues[q]
            .add_notify_wait_pop(&[data], &mut [], &mut self.t)
            .unwrap();
    }

    /// Post `data` on queue `q` without waiting (for requests the device refuses).
    fn send_nowait(&mut self, q: usize, data: &[u8]) {
        // SAFETY: the device only reads the buffer; it is never popped, and the test memory
        // bounce copy made by `add` stays valid until the harness is gone.
        unsafe { self.queues[q].add(&[data], &mut []) }.unwrap();
        self.t.notify(q as u16);
    }

    fn send_control(&mut self, id: u32, event: u16, value: u16) {
        self.send(3, &ControlMsg::encode(id, event, value, &[]));
    }

    /// Post one receive buffer on queue `q` and wait for the device to fill it.
    fn recv(&mut self, q: usize) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let queue = &mut self.queues[q];
        // SAFETY: `buf` outlives the request: it is popped below before returning.
        let token = unsafe { queue.add(&[], &mut [&mut buf]) }.unwrap();
        if queue.should_notify() {
            self.t.notify(q as u16);
        }
        let queue = &mut self.queues[q];
        wait_until(|| queue.can_pop());
        // SAFETY: same buffer as passed to `add`.
        let len = unsafe { queue.pop_used(token, &[], &mut [&mut buf]) }.unwrap();
        buf[..len as usize].to_vec()
    }

    fn recv_control(&mut self) -> (ControlMsg, Vec<u8>) {
        let bytes = self.recv(2);
        (ControlMsg::parse(&bytes).unwrap(), bytes[8..].to_vec())
    }
}

fn msg(id: u32, event: u16, value: u16) -> ControlMsg {
    ControlMsg { id, event, value }
}

#[test]
fn multiport_control_protocol_and_socket_reconnect() {
    let log = temp_path("logcat");
    let sock = temp_path("adb");
    let dev = Console::new(&[
        port(PortBackend::None, None, true),
        port(PortBackend::File(log.clone()), Some("logcat"), false),
        port(PortBackend::Socket(sock.clone()), Some("adb"), false),
    ])
    .unwrap();
    let h = TestHarness::new(Box::new(dev)).unwrap();
    let (to_guest, from_host) = std::sync::mpsc::channel::<&'static str>();
    let (to_host, from_guest) = std::sync::mpsc::channel::<Vec<u8>>();
    let transport = h.transport();
    let guest = std::thread::spawn(move || {
        let mut d = MultiportDriver::new(transport, 3);
        d.send_control(0, DEVICE_READY, 1);
        for id in 0..3 {
            assert_eq!(d.recv_control().0, msg(id, DEVICE_ADD, 1));
        }
        d.send_control(0, PORT_READY, 1);
        assert_eq!(d.recv_control().0, msg(0, CONSOLE_PORT, 1));
        assert_eq!(d.recv_control().0, msg(0, PORT_OPEN, 1));
        d.send_control(1, PORT_READY, 1);
        assert_eq!(d.recv_control(), (msg(1, PORT_NAME, 1), b"logcat".to_vec()));
        assert_eq!(d.recv_control().0, msg(1, PORT_OPEN, 1));
        d.send_control(2, PORT_READY, 1);
        assert_eq!(d.recv_control(), (msg(2, PORT_NAME, 1), b"adb".to_vec()));
        assert_eq!(d.recv_control().0, msg(2, PORT_OPEN, 0));
        d.send_control(2, PORT_OPEN, 1);
        d.send(5, b"I/ActivityManager: start\n"); // port 1 transmit
        to_host.send(Vec::new()).unwrap();
        // Host connects: PORT_OPEN(2, 1); then one round trip on port 2 (queues 6/7).
        assert_eq!(from_host.recv().unwrap(), "connected");
        assert_eq!(d.recv_control().0, msg(2, PORT_OPEN, 1));
        d.send(7, b"shell$ ");
        to_host.send(d.recv(6)).unwrap();
        // Host disconnects, then reconnects.
        assert_eq!(from_host.recv().unwrap(), "disconnected");
        assert_eq!(d.recv_control().0, msg(2, PORT_OPEN, 0));
        to_host.send(Vec::new()).unwrap();
        assert_eq!(from_host.recv().unwrap(), "reconnected");
        assert_eq!(d.recv_control().0, msg(2, PORT_OPEN, 1));
        to_host.send(d.recv(6)).unwrap();
    });
    from_guest.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(std::fs::read(&log).unwrap(), b"I/ActivityManager: start\n");
    let mut client = connect(&sock);
    to_guest.send("connected").unwrap();
    assert_eq!(read_exact_from(&mut client, 7), b"shell$ ");
    client.write_all(b"getprop\n").unwrap();
    assert_eq!(from_guest.recv_timeout(TIMEOUT).unwrap(), b"getprop\n");
    drop(client);
    to_guest.send("disconnected").unwrap();
    from_guest.recv_timeout(TIMEOUT).unwrap();
    let mut client = connect(&sock);
    to_guest.send("reconnected").unwrap();
    client.write_all(b"again").unwrap();
    assert_eq!(from_guest.recv_timeout(TIMEOUT).unwrap(), b"again");
    guest.join().unwrap();
    assert!(!h.needs_reset());
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&sock);
}

/// Snapshot/restore under a multiport driver: the restored console remembers which ports
/// the driver set up, tells it the host side of the new process (no socket client yet), and
/// the same driver's port works again once a client connects.
#[test]
fn multiport_driver_continues_after_snapshot_restore() {
    let ports = |sock: &PathBuf| {
        vec![
            port(PortBackend::None, None, true),
            port(PortBackend::Socket(sock.clone()), Some("adb"), false),
        ]
    };
    let sock = temp_path("snap");
    let h = TestHarness::new(Box::new(Console::new(&ports(&sock)).unwrap())).unwrap();
    let mut d = MultiportDriver::new(h.transport(), 2);
    d.send_control(0, DEVICE_READY, 1);
    for id in 0..2 {
        assert_eq!(d.recv_control().0, msg(id, DEVICE_ADD, 1));
    }
    d.send_control(1, PORT_READY, 1);
    assert_eq!(d.recv_control(), (msg(1, PORT_NAME, 1), b"adb".to_vec()));
    assert_eq!(d.recv_control().0, msg(1, PORT_OPEN, 0));
    let old_client = connect(&sock);
    assert_eq!(d.recv_control().0, msg(1, PORT_OPEN, 1));

    // The restored process listens on its own socket.
    let sock2 = temp_path("snap-restored");
    let state = h
        .snapshot_restore(|| Box::new(Console::new(&ports(&sock2)).unwrap()))
        .unwrap();
    let part = state.device.device.expect("console saves its ports");
    assert_eq!(part, serde_json::json!({ "guest_ready": [false, true] }));
    assert_eq!(d.recv_control().0, msg(1, PORT_OPEN, 0), "no client yet");
    let mut client = connect(&sock2);
    assert_eq!(d.recv_control().0, msg(1, PORT_OPEN, 1));
    d.send(5, b"echo? ");
    assert_eq!(read_exact_from(&mut client, 6), b"echo? ");
    client.write_all(b"yes").unwrap();
    assert_eq!(d.recv(4), b"yes");
    assert!(!h.needs_reset());
    drop(old_client);
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&sock2);
}

#[test]
fn short_control_message_marks_needs_reset() {
    let dev = Console::new(&[port(PortBackend::None, None, true)]).unwrap();
    let h = TestHarness::new(Box::new(dev)).unwrap();
    let transport = h.transport();
    run_with_timeout(TIMEOUT, move || {
        let mut d = MultiportDriver::new(transport, 1);
        d.send_nowait(3, &[1, 2, 3]);
    });
    wait_until(|| h.needs_reset());
    // The guest can recover with a reset and a fresh init.
    let transport = h.transport();
    run_with_timeout(TIMEOUT, move || {
        let mut d = MultiportDriver::new(transport, 1);
        d.send_control(0, DEVICE_READY, 1);
        assert_eq!(d.recv_control().0, msg(0, DEVICE_ADD, 1));
    });
    assert!(!h.needs_reset());
}

#[test]
fn fuzz_console_hostile_rings_and_control_messages() {
    use super::handler::ConsoleHandler;
    use super::port::Port;
    use crate::testing::hostile::{
        arb_ring, device_queue, fuzz, memory_with, RecordingInterrupt, DATA,
    };
    use crate::DeviceQueue;
    use crate::WorkerContext;
    use crate::WorkerHandler;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::epoll::EventSet;

    let ctx = WorkerContext::new().unwrap();
    let none = port(PortBackend::None, Some("n"), true);
    // Mostly well-formed control messages (small ids, known events) so the protocol paths
    // run, plus raw junk.
    let message = prop_oneof![
        (0u32..4, 0u16..8, 0u16..2).prop_map(|(id, ev, v)| ControlMsg::encode(id, ev, v, &[])),
        proptest::collection::vec(any::<u8>(), 0..16),
    ];
    let payload = proptest::collection::vec(message, 1..16).prop_map(|m| m.concat());
    // Queues: 0/1 port 0, 2/3 control, 4/5 port 1.
    let strategy = (arb_ring(), payload, 0usize..6, any::<bool>());
    fuzz(
        "console",
        2000,
        strategy,
        |(ring, payload, q, event_idx)| {
            let mem = memory_with(&ring);
            mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
            let ports = vec![Port::open(0, &none).unwrap(), Port::open(1, &none).unwrap()];
            let mut queues: Vec<Option<DeviceQueue>> = (0..6).map(|_| None).collect();
            queues[q] = Some(device_queue(q as u16, event_idx));
            let mut handler = ConsoleHandler::new(
                mem,
                Arc::new(RecordingInterrupt::default()),
                queues,
                Arc::new(Mutex::new(ports)),
                true,
                false,
            );
            // Whatever the guest wrote: an Ok or a clean error, never a panic or a hang.
            let _ = handler.handle(&ctx, q as u64, EventSet::IN);
            let _ = handler.handle(&ctx, 2, EventSet::IN);
            Ok(())
        },
    );
}

#[test]
fn slow_socket_client_gets_every_byte_in_order() {
    let path = temp_path("slow");
    let dev = Console::new(&[port(PortBackend::Socket(path.clone()), None, true)]).unwrap();
    let h = TestHarness::new(Box::new(dev)).unwrap();
    let mut client = connect(&path);
    let transport = h.transport();
    // 2 MiB is far more than a socket buffer: the device must hold output back (not drop
    // it) until the client reads.
    let data: Vec<u8> = (0..2u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    let sent = data.clone();
    let guest = std::thread::spawn(move || {
        let mut console = VirtIOConsole::<TestHal, _>::new(transport).unwrap();
        for chunk in sent.chunks(32 * 1024) {
            console.send_bytes(chunk).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !guest.is_finished(),
        "guest output must be back-pressured by a stalled client"
    );
    assert_eq!(read_exact_from(&mut client, data.len()), data);
    guest.join().unwrap();
    assert!(!h.needs_reset());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn output_without_a_client_is_dropped_without_blocking_the_guest() {
    let path = temp_path("noclient");
    let dev = Console::new(&[port(PortBackend::Socket(path.clone()), None, true)]).unwrap();
    let h = TestHarness::new(Box::new(dev)).unwrap();
    let transport = h.transport();
    run_with_timeout(TIMEOUT, move || {
        let mut console = VirtIOConsole::<TestHal, _>::new(transport).unwrap();
        for _ in 0..64 {
            console.send_bytes(&[b'x'; 4096]).unwrap();
        }
    });
    // A client that connects later sees only what is sent after it connected (the guest
    // repeats its line until the host saw it, as the accept races the first send).
    let mut client = connect(&path);
    let transport = h.transport();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_guest = stop.clone();
    let guest = std::thread::spawn(move || {
        let mut console = VirtIOConsole::<TestHal, _>::new(transport).unwrap();
        while !stop_guest.load(Ordering::Relaxed) {
            console.send_bytes(b"fresh").unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    assert_eq!(read_exact_from(&mut client, 5), b"fresh");
    stop.store(true, Ordering::Relaxed);
    guest.join().unwrap();
    let _ = std::fs::remove_file(&path);
}
