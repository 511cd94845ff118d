//! Property test over the transport's whole guest-facing register interface: arbitrary
//! sequences of config space and BAR accesses (any offset, any size) never panic, and the
//! status state machine keeps its invariants.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;

use super::tests::{device, driver_ok, enable_msix, negotiate, r, setup_queue, w};
use super::*;
use crate::testing::hostile::fuzz;

#[derive(Clone, Debug)]
enum Op {
    ConfigRead(usize),
    ConfigWrite(usize, u64, Vec<u8>),
    BarRead(usize, u64, usize),
    BarWrite(usize, u64, Vec<u8>),
    /// A whole driver init (features, queue 0, DRIVER_OK) with arbitrary parameters, so
    /// activation and its validation run inside the random sequences too.
    Init {
        msix: bool,
        features: u64,
        size: u64,
        rings: [u64; 3],
    },
}

fn arb_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..0x40,                      // common config
        2 => (0u64..4).prop_map(|r| r * 0x1000 + 0x14), // region starts
        2 => 0u64..0x4000,
        1 => any::<u64>(),
    ]
}

fn arb_data() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(vec![0u8]),
        Just(vec![0xffu8; 4]),
        proptest::collection::vec(0u8..16, 1..=8),
        proptest::collection::vec(any::<u8>(), 0..=9),
    ];
    value
}

fn arb_init() -> impl Strategy<Value = Op> {
    let ring = prop_oneof![4 => (0u64..0x100).prop_map(|p| p * 0x1000), 1 => any::<u64>()];
    let features =
        prop_oneof![3 => Just(1u64 << 32), 1 => any::<u64>(), 1 => Just(1u64 << 32 | 1 << 29)];
    let size = prop_oneof![3 => Just(16u64), 1 => 0u64..0x10000];
    (
        any::<bool>(),
        features,
        size,
        [ring.clone(), ring.clone(), ring],
    )
        .prop_map(|(msix, features, size, rings)| Op::Init {
            msix,
            features,
            size,
            rings,
        })
}

fn arb_op() -> impl Strategy<Value = Op> {
    let reg = prop_oneof![4 => 0usize..64, 1 => any::<usize>()];
    let bar = prop_oneof![4 => Just(VIRTIO_BAR), 2 => Just(MSIX_BAR), 1 => 0usize..8];
    prop_oneof![
        reg.clone().prop_map(Op::ConfigRead),
        (reg, 0u64..6, arb_data()).prop_map(|(r, o, d)| Op::ConfigWrite(r, o, d)),
        (bar.clone(), arb_offset(), 0usize..10).prop_map(|(b, o, l)| Op::BarRead(b, o, l)),
        (bar, arb_offset(), arb_data()).prop_map(|(b, o, d)| Op::BarWrite(b, o, d)),
        arb_init(),
    ]
}

static ACTIVATIONS: AtomicU64 = AtomicU64::new(0);

#[test]
fn fuzz_transport_registers() {
    let ops = proptest::collection::vec(arb_op(), 1..64);
    fuzz("pci_transport_registers", 1500, ops, |ops| {
        let (mut d, _sink) = device();
        let mut activations = 0u64;
        for op in ops {
            match op {
                Op::ConfigRead(reg) => {
                    d.config_read(reg);
                }
                Op::ConfigWrite(reg, off, data) => {
                    d.config_write(reg, off, &data);
                }
                Op::BarRead(bar, off, len) => d.bar_read(bar, off, &mut vec![0; len]),
                Op::BarWrite(bar, off, data) => d.bar_write(bar, off, &data),
                Op::Init {
                    msix,
                    features,
                    size,
                    rings,
                } => {
                    if msix {
                        enable_msix(&mut d, 2);
                    }
                    negotiate(&mut d, features);
                    setup_queue(&mut d, size, rings[0], rings[1], rings[2]);
                    driver_ok(&mut d);
                    activations += u64::from(d.is_activated());
                }
            }
            let status = d.device_status();
            prop_assert!(status & DRIVER_OK == 0 || status & FEATURES_OK != 0);
            prop_assert!(!d.is_activated() || status & DRIVER_OK != 0);
        }
        // Whatever happened, a reset brings the device back to a clean state.
        w(&mut d, 0x14, 1, 0);
        prop_assert_eq!(r(&mut d, 0x14, 1), 0);
        prop_assert!(!d.is_activated());
        ACTIVATIONS.fetch_add(activations, Ordering::Relaxed);
        Ok(())
    });
    let activations = ACTIVATIONS.load(Ordering::Relaxed);
    eprintln!("fuzz pci_transport_registers: {activations} successful activations");
    assert!(
        activations > 0,
        "the fuzz never reached an activated device"
    );
}
