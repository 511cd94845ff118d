//! virtio-drivers' VirtIONet as the guest driver, through the real virtio-pci transport.

use std::sync::Arc;
use std::time::Duration;

use cloudphone_virtio::testing::{run_with_timeout, TestHal, TestHarness};
use virtio_drivers::device::net::VirtIONet;

use super::*;
use crate::testutil::DgramBackend;

const MAC: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// One frame guest -> wire and one wire -> guest through `drv`.
fn round_trip<T: virtio_drivers::transport::Transport>(
    drv: &mut VirtIONet<TestHal, T, 16>,
    wire: &std::os::unix::net::UnixDatagram,
    i: u8,
) {
    let frame = payload(60 + i as usize * 29, i);
    let mut tx = drv.new_tx_buffer(frame.len());
    tx.packet_mut().copy_from_slice(&frame);
    drv.send(tx).unwrap();
    let mut got = vec![0; 4096];
    let n = wire.recv(&mut got).unwrap();
    assert_eq!(&got[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..n], &frame[..], "tx frame {i}");

    let mut incoming = vec![0u8; VNET_HDR_LEN];
    incoming.extend(payload(1514 - i as usize, i ^ 0x5a));
    wire.send(&incoming).unwrap();
    let rx = loop {
        match drv.receive() {
            Ok(rx) => break rx,
            Err(virtio_drivers::Error::NotReady) => std::thread::yield_now(),
            Err(e) => panic!("receive failed: {e:?}"),
        }
    };
    assert_eq!(rx.packet(), &incoming[VNET_HDR_LEN..], "rx frame {i}");
    drv.recycle_rx_buffer(rx).unwrap();
}

/// Snapshot/restore between frames, more times than the driver has receive buffers: the
/// chain the device holds for the next frame goes back to the ring each time (a lost one per
/// restore would starve the driver), and frames keep moving both ways.
#[test]
fn driver_continues_across_repeated_snapshot_restores() {
    let (backend, wire) = DgramBackend::pair();
    let h = TestHarness::new(Box::new(Net::with_backend(backend.clone(), MAC))).unwrap();
    let transport = h.transport();
    let wire = Arc::new(wire);
    let w = wire.clone();
    let mut drv = run_with_timeout(Duration::from_secs(30), move || {
        let mut drv = VirtIONet::<TestHal, _, 16>::new(transport, 2048).unwrap();
        round_trip(&mut drv, &w, 0);
        drv
    });
    for i in 1..=24u8 {
        let state = h
            .snapshot_restore(|| Box::new(Net::with_backend(backend.clone(), MAC)))
            .unwrap();
        let rx = state.device.common.queues[0];
        assert_eq!(rx.next_avail, rx.next_used, "held chains handed back");
        let w = wire.clone();
        drv = run_with_timeout(Duration::from_secs(30), move || {
            round_trip(&mut drv, &w, i);
            drv
        });
    }
    assert!(!h.needs_reset());
}

#[test]
fn virtio_drivers_net_moves_frames_both_ways() {
    let (backend, wire) = DgramBackend::pair();
    let h = TestHarness::new(Box::new(Net::with_backend(backend.clone(), MAC))).unwrap();
    let transport = h.transport();
    let wire = Arc::new(wire);
    let wire_guest = wire.clone();
    run_with_timeout(Duration::from_secs(30), move || {
        let mut drv = VirtIONet::<TestHal, _, 16>::new(transport, 2048).unwrap();
        assert_eq!(drv.mac_address(), MAC.0);
        for i in 0..50u8 {
            round_trip(&mut drv, &wire_guest, i);
        }
    });
    assert!(!h.needs_reset());
    // The polling driver pops each frame as soon as it is published and moves `used_event`
    // past it (EVENT_IDX), so the frames above may rightly raise no interrupt. A frame the
    // driver has not popped yet must.
    let before = h.msi().count(TestHarness::queue_vector(0));
    let mut unread = vec![0u8; VNET_HDR_LEN];
    unread.extend(payload(100, 7));
    wire.send(&unread).unwrap();
    assert!(
        h.msi().wait_for(
            TestHarness::queue_vector(0),
            before,
            Duration::from_secs(10)
        ),
        "an rx interrupt was raised for a frame the driver waits for"
    );
    // virtio-drivers negotiates no receive offloads: the TAP must not send it GSO frames.
    let offload = backend
        .offload
        .lock()
        .unwrap()
        .expect("offloads set on activation");
    assert_eq!(
        offload & (1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_CSUM),
        0
    );
}
