//! Register-level tests of the virtio-pci transport (the driver-level path is covered by the
//! device tests through `testing::TestHarness`).

use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::rng::Rng;
use crate::testing::CountingMsiSink;
use crate::InterruptCause;

const MEM_SIZE: usize = 0x10_0000;
// Common configuration field offsets.
const DFSEL: u64 = 0x00;
const DF: u64 = 0x04;
const GFSEL: u64 = 0x08;
const GF: u64 = 0x0c;
const CONFIG_VEC: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const STATUS: u64 = 0x14;
const GENERATION: u64 = 0x15;
const QSEL: u64 = 0x16;
const QSIZE: u64 = 0x18;
const QVEC: u64 = 0x1a;
const QENABLE: u64 = 0x1c;
const QNOTIFY_OFF: u64 = 0x1e;
const QDESC: u64 = 0x20;
const QDRIVER: u64 = 0x28;
const QDEVICE: u64 = 0x30;

const ACK_DRIVER: u64 = 0x3;

pub(super) fn device() -> (VirtioPciDevice, Arc<CountingMsiSink>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let sink = Arc::new(CountingMsiSink::default());
    let dev = VirtioPciDevice::new(Box::new(Rng::new()), mem, sink.clone()).unwrap();
    (dev, sink)
}

pub(super) fn w(d: &mut VirtioPciDevice, off: u64, len: usize, val: u64) {
    d.bar_write(VIRTIO_BAR, off, &val.to_le_bytes()[..len]);
}

pub(super) fn r(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut buf = [0u8; 8];
    d.bar_read(VIRTIO_BAR, off, &mut buf[..len]);
    u64::from_le_bytes(buf)
}

pub(super) fn negotiate(d: &mut VirtioPciDevice, features: u64) -> u8 {
    w(d, STATUS, 1, 0);
    w(d, STATUS, 1, ACK_DRIVER);
    w(d, GFSEL, 4, 0);
    w(d, GF, 4, features & 0xffff_ffff);
    w(d, GFSEL, 4, 1);
    w(d, GF, 4, features >> 32);
    w(d, STATUS, 1, ACK_DRIVER | 0x8);
    r(d, STATUS, 1) as u8
}

pub(super) fn setup_queue(d: &mut VirtioPciDevice, size: u64, desc: u64, driver: u64, device: u64) {
    w(d, QSEL, 2, 0);
    w(d, QSIZE, 2, size);
    for (off, addr) in [(QDESC, desc), (QDRIVER, driver), (QDEVICE, device)] {
        w(d, off, 4, addr & 0xffff_ffff);
        w(d, off + 4, 4, addr >> 32);
    }
    w(d, QENABLE, 2, 1);
}

pub(super) fn driver_ok(d: &mut VirtioPciDevice) {
    w(d, STATUS, 1, ACK_DRIVER | 0x8 | 0x4);
}

/// Enable MSI-X in config space and program + unmask `vectors` entries.
pub(super) fn enable_msix(d: &mut VirtioPciDevice, vectors: u64) {
    let cap = d.caps.msix;
    d.config_write(cap / 4, 2, &0x8000u16.to_le_bytes());
    for v in 0..vectors {
        d.bar_write(MSIX_BAR, v * 16, &0xfee0_0000u32.to_le_bytes());
        d.bar_write(MSIX_BAR, v * 16 + 8, &(0x40 + v as u32).to_le_bytes());
        d.bar_write(MSIX_BAR, v * 16 + 12, &0u32.to_le_bytes());
    }
}

#[test]
fn pci_identity_and_bars() {
    let (mut d, _) = device();
    assert_eq!(d.config_read(0), 0x1044_1af4);
    assert_eq!(d.config_read(2) >> 8, 0xff_0000);
    assert_eq!(d.config_read(11), 0x1100_1af4);
    let bars = d.bars();
    assert_eq!(bars.len(), 2);
    assert_eq!((bars[0].index, bars[0].size), (VIRTIO_BAR, VIRTIO_BAR_SIZE));
    assert_eq!((bars[1].index, bars[1].kind), (MSIX_BAR, BarKind::Memory64));
    d.set_bar_address(VIRTIO_BAR, 0xc000_0000).unwrap();
    // The guest moves BAR 0: the VMM is told so it can move the ioeventfds.
    let moved = d.config_write(4, 0, &0xd000_0000u32.to_le_bytes()).unwrap();
    assert_eq!((moved.old, moved.new), (0xc000_0000, 0xd000_0000));
    let offsets: Vec<u64> = d.notify_eventfds().iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![NOTIFY_OFFSET]);
    assert_eq!(r(&mut d, NUM_QUEUES, 2), 1);
    assert_eq!(r(&mut d, QNOTIFY_OFF, 2), 0);
}

#[test]
fn virtio_capabilities_describe_the_layout() {
    let (d, _) = device();
    let mut found = Vec::new();
    let mut ptr = (d.config_read(0x34 / 4) & 0xff) as usize;
    while ptr != 0 {
        let mut cap = [0u8; 20];
        d.config.read_bytes(ptr, &mut cap);
        if cap[0] == VENDOR_CAP_ID {
            let offset = u32::from_le_bytes(cap[8..12].try_into().unwrap());
            found.push((cap[3], cap[4], u64::from(offset)));
            if cap[3] == CAP_NOTIFY {
                assert_eq!(u32::from_le_bytes(cap[16..20].try_into().unwrap()), 4);
            }
        }
        ptr = cap[1] as usize;
    }
    assert_eq!(
        found,
        vec![
            (CAP_COMMON, 0, COMMON_CFG_OFFSET),
            (CAP_NOTIFY, 0, NOTIFY_OFFSET),
            (CAP_ISR, 0, ISR_OFFSET),
            (CAP_DEVICE, 0, DEVICE_CFG_OFFSET),
            (CAP_PCI_CFG, 0, 0),
        ]
    );
}

#[test]
fn pci_cfg_window_reaches_the_bars() {
    let (mut d, _) = device();
    let cap = d.caps.pci_cfg;
    let data_reg = (cap + 16) / 4;
    let program = |d: &mut VirtioPciDevice, offset: u32, len: u32| {
        d.config_write(cap / 4 + 1, 0, &[VIRTIO_BAR as u8]);
        d.config_write(cap / 4 + 2, 0, &offset.to_le_bytes());
        d.config_write(cap / 4 + 3, 0, &len.to_le_bytes());
    };
    program(&mut d, NUM_QUEUES as u32, 2);
    assert_eq!(d.config_read(data_reg), 1);
    program(&mut d, STATUS as u32, 1);
    d.config_write(data_reg, 0, &[0x1, 0, 0, 0]);
    assert_eq!(r(&mut d, STATUS, 1), 0x1);
    assert_eq!(d.config_read(data_reg), 0x1);
    // An invalid window (length 3, or misaligned) does nothing and reads 0.
    program(&mut d, STATUS as u32, 3);
    d.config_write(data_reg, 0, &[0x3, 0, 0, 0]);
    assert_eq!(d.config_read(data_reg), 0);
    assert_eq!(r(&mut d, STATUS, 1), 0x1);
}

#[test]
fn features_ok_requires_version_1_and_offered_bits() {
    let (mut d, _) = device();
    w(&mut d, DFSEL, 4, 1);
    assert_eq!(r(&mut d, DF, 4) & 1, 1, "VERSION_1 offered");
    assert_eq!(negotiate(&mut d, 0) & 0x8, 0, "legacy driver refused");
    assert_eq!(
        negotiate(&mut d, 1 << 32 | 1 << 50) & 0x8,
        0,
        "unoffered bit refused"
    );
    assert_eq!(negotiate(&mut d, 1 << 32) & 0x8, 0x8);
    // Features are frozen after FEATURES_OK.
    w(&mut d, GFSEL, 4, 0);
    w(&mut d, GF, 4, 0xffff_ffff);
    assert_eq!(r(&mut d, GF, 4), 0);
}

#[test]
fn driver_ok_without_features_ok_does_not_activate() {
    let (mut d, _) = device();
    w(&mut d, STATUS, 1, ACK_DRIVER);
    setup_queue(&mut d, 16, 0x1000, 0x2000, 0x3000);
    w(&mut d, STATUS, 1, ACK_DRIVER | 0x4);
    assert!(!d.is_activated());
    assert_eq!(r(&mut d, STATUS, 1), ACK_DRIVER);
}

#[test]
fn valid_setup_activates_and_reset_reinitialises() {
    let (mut d, _) = device();
    negotiate(&mut d, 1 << 32);
    setup_queue(&mut d, 16, 0x1000, 0x2000, 0x3000);
    driver_ok(&mut d);
    assert!(d.is_activated());
    assert_eq!(r(&mut d, STATUS, 1), 0xf);
    // Queue registers are frozen after DRIVER_OK.
    w(&mut d, QSIZE, 2, 4);
    assert_eq!(r(&mut d, QSIZE, 2), 16);
    // Clearing bits without a reset is ignored.
    w(&mut d, STATUS, 1, 0x1);
    assert_eq!(r(&mut d, STATUS, 1), 0xf);
    w(&mut d, STATUS, 1, 0);
    assert!(!d.is_activated());
    assert_eq!(r(&mut d, STATUS, 1), 0);
    assert_eq!(r(&mut d, QSIZE, 2), 256, "queue size back to maximum");
    assert_eq!(r(&mut d, QENABLE, 2), 0);
    assert_eq!(r(&mut d, QVEC, 2), u64::from(NO_VECTOR));
    negotiate(&mut d, 1 << 32);
    setup_queue(&mut d, 16, 0x1000, 0x2000, 0x3000);
    driver_ok(&mut d);
    assert!(d.is_activated());
}

#[test]
fn invalid_queues_mark_needs_reset_without_activation() {
    let cases = [
        (3, 0x1000, 0x2000, 0x3000),           // size not a power of two
        (512, 0x1000, 0x2000, 0x3000),         // above the maximum
        (0, 0x1000, 0x2000, 0x3000),           // zero
        (16, 0x1008, 0x2000, 0x3000),          // misaligned descriptor table
        (16, 0x1000, 0x2001, 0x3000),          // misaligned avail ring
        (16, 0x1000, 0x2000, MEM_SIZE as u64), // used ring outside memory
        (16, u64::MAX - 0xff, 0x2000, 0x3000), // wraps the address space
    ];
    for (size, desc, avail, used) in cases {
        let (mut d, sink) = device();
        enable_msix(&mut d, 2);
        negotiate(&mut d, 1 << 32);
        w(&mut d, CONFIG_VEC, 2, 0);
        setup_queue(&mut d, size, desc, avail, used);
        driver_ok(&mut d);
        assert!(
            !d.is_activated(),
            "case {size} {desc:#x} {avail:#x} {used:#x}"
        );
        assert_eq!(r(&mut d, STATUS, 1) & 0x40, 0x40);
        assert_eq!(sink.count(0), 1, "config interrupt announces NEEDS_RESET");
        w(&mut d, STATUS, 1, 0);
        assert_eq!(r(&mut d, STATUS, 1), 0, "reset clears NEEDS_RESET");
    }
}

#[test]
fn msix_vectors_masking_and_pending() {
    let (mut d, sink) = device();
    enable_msix(&mut d, 2);
    negotiate(&mut d, 1 << 32);
    w(&mut d, CONFIG_VEC, 2, 0);
    w(&mut d, QSEL, 2, 0);
    w(&mut d, QVEC, 2, 7); // beyond the 2-entry table
    assert_eq!(r(&mut d, QVEC, 2), u64::from(NO_VECTOR));
    w(&mut d, QVEC, 2, 1);
    assert_eq!(r(&mut d, QVEC, 2), 1);
    let irq = d.interrupt();
    irq.trigger(InterruptCause::Queue(0)).unwrap();
    assert_eq!(sink.count(1), 1);
    assert_eq!(sink.message(1).unwrap().data, 0x41);
    // Mask vector 1: the interrupt is latched in the PBA, delivered on unmask.
    d.bar_write(MSIX_BAR, 16 + 12, &1u32.to_le_bytes());
    irq.trigger(InterruptCause::Queue(0)).unwrap();
    assert_eq!(sink.count(1), 1);
    let pba_offset = 2 * 16;
    let mut pba = [0u8; 8];
    d.bar_read(MSIX_BAR, pba_offset, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0b10);
    d.bar_write(MSIX_BAR, 16 + 12, &0u32.to_le_bytes());
    assert_eq!(sink.count(1), 2);
    d.bar_read(MSIX_BAR, pba_offset, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 0);
    // Signalling a queue that does not exist is an error, not a panic.
    assert!(irq.trigger(InterruptCause::Queue(9)).is_err());
}

#[test]
fn isr_and_config_generation_without_msix() {
    let (mut d, sink) = device();
    let irq = d.interrupt();
    let gen = r(&mut d, GENERATION, 1);
    irq.trigger(InterruptCause::Config).unwrap();
    irq.trigger(InterruptCause::Queue(0)).unwrap();
    assert_eq!(r(&mut d, GENERATION, 1), gen + 1);
    assert_eq!(r(&mut d, ISR_OFFSET, 1), u64::from(ISR_CONFIG | ISR_QUEUE));
    assert_eq!(r(&mut d, ISR_OFFSET, 1), 0, "reading the ISR clears it");
    assert_eq!(sink.total(), 0);
}

#[test]
fn notify_write_signals_the_queue_eventfd() {
    let (mut d, _) = device();
    w(&mut d, NOTIFY_OFFSET, 2, 0);
    assert_eq!(d.notify_eventfds()[0].1.read().unwrap(), 1);
    // Notifying a queue that does not exist is ignored.
    w(&mut d, NOTIFY_OFFSET + 4, 2, 1);
    assert!(
        d.notify_eventfds()[0].1.read().is_err(),
        "no further notification"
    );
}

#[test]
fn malformed_accesses_are_ignored() {
    let (mut d, _) = device();
    w(&mut d, STATUS, 2, 0xffff); // wrong width
    w(&mut d, STATUS + 1, 1, 0xff); // read-only generation
    w(&mut d, QDESC + 2, 4, 0xffff_ffff); // unaligned half
    w(&mut d, NUM_QUEUES, 2, 9); // read-only
    w(&mut d, VIRTIO_BAR_SIZE + 4, 4, 1); // beyond the BAR
    d.bar_write(5, 0, &[1, 2, 3, 4]); // no such BAR
    d.bar_write(MSIX_BAR, 3, &[1, 2, 3, 4]); // misaligned MSI-X
    d.bar_write(MSIX_BAR, 0x10_0000, &[1, 2, 3, 4]); // beyond the table and PBA
    assert_eq!(r(&mut d, STATUS, 1), 0);
    assert_eq!(r(&mut d, NUM_QUEUES, 2), 1);
    assert_eq!(r(&mut d, QDESC, 4), 0);
    assert_eq!(r(&mut d, STATUS, 4), 0, "wrong-width read returns 0");
    let mut big = [0xaau8; 3];
    d.bar_read(VIRTIO_BAR, ISR_OFFSET, &mut big);
    assert_eq!(big, [0; 3]);
    // Writes to a queue that does not exist.
    w(&mut d, QSEL, 2, 5);
    w(&mut d, QSIZE, 2, 8);
    assert_eq!(r(&mut d, QSIZE, 2), 0, "absent queue reads size 0");
}

#[test]
fn construction_rejects_bad_devices() {
    struct Bad(crate::VirtioCommon);
    impl VirtioDevice for Bad {
        crate::virtio_common!(0);

        fn read_config(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn worker_name(&self) -> &str {
            "bad"
        }
        fn worker(
            &mut self,
            _: crate::Activation,
        ) -> Result<Box<dyn crate::WorkerHandler>, crate::ActivateError> {
            Err(crate::ActivateError::Backend("never activated".into()))
        }
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let sink = Arc::new(CountingMsiSink::default());
    let build = |sizes: Vec<u16>| {
        VirtioPciDevice::new(
            Box::new(Bad(crate::VirtioCommon::new(4, &sizes, 0))),
            mem.clone(),
            sink.clone(),
        )
        .err()
    };
    assert!(matches!(build(vec![]), Some(TransportError::QueueCount(0))));
    assert!(matches!(
        build(vec![100]),
        Some(TransportError::MaxQueueSize { .. })
    ));
    assert!(matches!(
        build(vec![8; MAX_QUEUES + 1]),
        Some(TransportError::QueueCount(_))
    ));
}
