//! virtio-drivers' VirtIOSocket / VsockConnectionManager as the guest driver, through the real
//! virtio-pci transport, with host programs on the Unix sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use cloudphone_virtio::testing::{run_with_timeout, TestHal, TestHarness};
use virtio_drivers::device::socket::{
    VirtIOSocket, VsockAddr, VsockConnectionManager, VsockEventType,
};

use super::*;

fn sock_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cpvd-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

type Manager = VsockConnectionManager<TestHal, cloudphone_virtio::testing::TestTransport>;

fn manager(h: &TestHarness) -> Manager {
    VsockConnectionManager::new(VirtIOSocket::<TestHal, _>::new(h.transport()).unwrap())
}

#[test]
fn host_connects_to_guest_listener_and_gets_an_echo() {
    let dir = sock_dir("echo");
    let uds = dir.join("v.sock");
    let h = TestHarness::new(Box::new(
        Vsock::new(&VsockSpec {
            cid: 42,
            uds: uds.clone(),
        })
        .unwrap(),
    ))
    .unwrap();
    let mut mgr = manager(&h);
    assert_eq!(mgr.guest_cid(), 42);
    mgr.listen(5555);

    let host = std::thread::spawn(move || {
        let stream = UnixStream::connect(&uds).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        writer.write_all(b"CONNECT 5555\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("OK ") && line.ends_with('\n'), "{line:?}");
        let data = pattern(100 * 1024);
        let to_send = data.clone();
        let sender = std::thread::spawn(move || writer.write_all(&to_send).map(|()| writer));
        let mut echo = vec![0; data.len()];
        reader.read_exact(&mut echo).unwrap();
        assert!(echo == data, "echo differs");
        let writer = sender.join().unwrap().unwrap();
        writer.shutdown(std::net::Shutdown::Both).unwrap();
    });

    run_with_timeout(Duration::from_secs(60), move || {
        let mut echoed = 0;
        loop {
            let event = mgr.wait_for_event().unwrap();
            let (peer, port) = (event.source, event.destination.port);
            match event.event_type {
                VsockEventType::Received { .. } => {
                    let mut buf = vec![0; 4096];
                    let n = mgr.recv(peer, port, &mut buf).unwrap();
                    mgr.update_credit(peer, port).unwrap();
                    mgr.send(peer, port, &buf[..n]).unwrap();
                    echoed += n;
                }
                VsockEventType::Disconnected { .. } => break,
                _ => {}
            }
        }
        assert_eq!(echoed, 100 * 1024);
    });
    host.join().unwrap();
    assert!(!h.needs_reset());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn guest_connects_to_host_port_and_closes() {
    let dir = sock_dir("out");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let h = TestHarness::new(Box::new(Vsock::new(&VsockSpec { cid: 3, uds }).unwrap())).unwrap();
    let mut mgr = manager(&h);

    let host = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = vec![0; 10 * 1024];
        stream.read_exact(&mut got).unwrap();
        assert!(got == pattern(10 * 1024));
        stream.write_all(b"got 10240").unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "EOF after the guest closed");
    });

    run_with_timeout(Duration::from_secs(60), move || {
        let host = VsockAddr { cid: 2, port: 1234 };
        mgr.connect(host, 40000).unwrap();
        let event = mgr.wait_for_event().unwrap();
        assert!(
            matches!(event.event_type, VsockEventType::Connected),
            "{event:?}"
        );
        mgr.send(host, 40000, &pattern(10 * 1024)).unwrap();
        let event = mgr.wait_for_event().unwrap();
        assert!(
            matches!(event.event_type, VsockEventType::Received { length: 9 }),
            "{event:?}"
        );
        let mut buf = [0u8; 16];
        assert_eq!(mgr.recv(host, 40000, &mut buf).unwrap(), 9);
        assert_eq!(&buf[..9], b"got 10240");
        mgr.shutdown(host, 40000).unwrap();
        loop {
            if let VsockEventType::Disconnected { .. } = mgr.wait_for_event().unwrap().event_type {
                break;
            }
        }
        // Nothing listens on host port 9: the device refuses with RST.
        mgr.connect(VsockAddr { cid: 2, port: 9 }, 40001).unwrap();
        let event = mgr.wait_for_event().unwrap();
        assert!(
            matches!(event.event_type, VsockEventType::Disconnected { .. }),
            "{event:?}"
        );
    });
    host.join().unwrap();
    assert!(!h.needs_reset());
    let _ = std::fs::remove_dir_all(dir);
}

/// Snapshot/restore under a connected guest driver: the host stream of the old process is
/// gone, the guest's stale connection is answered with RST, and the same driver opens new
/// connections through the restored device.
#[test]
fn driver_continues_after_snapshot_restore_with_connections_reset() {
    let dir = sock_dir("snap");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_1234", uds.display())).unwrap();
    let spec = VsockSpec { cid: 3, uds };
    let h = TestHarness::new(Box::new(Vsock::new(&spec).unwrap())).unwrap();
    let mut mgr = manager(&h);
    let host = VsockAddr { cid: 2, port: 1234 };
    let accept = std::thread::spawn(move || listener.accept().unwrap().0);
    let mut mgr = run_with_timeout(Duration::from_secs(30), move || {
        mgr.connect(host, 40000).unwrap();
        let event = mgr.wait_for_event().unwrap();
        assert!(
            matches!(event.event_type, VsockEventType::Connected),
            "{event:?}"
        );
        mgr
    });
    let mut old_stream = accept.join().unwrap();

    // The restored process listens on the same path (the old one removed it on exit).
    let state = h
        .snapshot_restore(|| Box::new(Vsock::new(&spec).unwrap()))
        .unwrap();
    assert_eq!(state.device.device, None, "connections are not saved");
    old_stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    old_stream.read_to_end(&mut rest).unwrap();

    let listener = UnixListener::bind(format!("{}_1235", spec.uds.display())).unwrap();
    let accept = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        got
    });
    run_with_timeout(Duration::from_secs(30), move || {
        mgr.send(host, 40000, b"stale").unwrap();
        loop {
            let event = mgr.wait_for_event().unwrap();
            if matches!(event.event_type, VsockEventType::Disconnected { .. }) {
                assert_eq!(event.destination.port, 40000);
                break;
            }
        }
        let fresh = VsockAddr { cid: 2, port: 1235 };
        mgr.connect(fresh, 40001).unwrap();
        let event = mgr.wait_for_event().unwrap();
        assert!(
            matches!(event.event_type, VsockEventType::Connected),
            "{event:?}"
        );
        mgr.send(fresh, 40001, b"again").unwrap();
    });
    assert_eq!(&accept.join().unwrap(), b"again");
    assert!(!h.needs_reset());
    let _ = std::fs::remove_dir_all(dir);
}
