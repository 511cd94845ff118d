//! Snapshot state of the transport: a driven function round-trips through JSON into a new
//! one that is in the same state and running, and corrupted states are refused, never
//! panicked on.

use proptest::prelude::*;

use super::tests::{device, driver_ok, enable_msix, negotiate, r, setup_queue, w};
use super::*;
use crate::rng::Rng;
use crate::testing::hostile::fuzz;
use crate::testing::CountingMsiSink;
use crate::InterruptCause;

const BAR0: u64 = 0xc000_0000;
const BAR2: u64 = 0xc001_0000;

/// A running rng function as a Linux driver leaves it: BARs placed, MSI-X on, queue 0 live.
fn running() -> (VirtioPciDevice, TransportState) {
    let (mut d, _) = device();
    d.set_bar_address(VIRTIO_BAR, BAR0).unwrap();
    d.set_bar_address(MSIX_BAR, BAR2).unwrap();
    d.config_write(1, 0, &[0x06, 0x00]);
    enable_msix(&mut d, 2);
    negotiate(&mut d, 1 << 32);
    w(&mut d, 0x10, 2, 0);
    setup_queue(&mut d, 16, 0x1000, 0x2000, 0x3000);
    w(&mut d, 0x1a, 2, 1);
    driver_ok(&mut d);
    assert!(d.is_activated());
    let state = d.save_state().unwrap();
    (d, state)
}

fn restore(
    state: &TransportState,
) -> Result<(VirtioPciDevice, Arc<CountingMsiSink>), RestoreError> {
    let (fresh, _) = device();
    let sink = Arc::new(CountingMsiSink::default());
    let mut d =
        VirtioPciDevice::restore(Box::new(Rng::new()), fresh.mem.clone(), sink.clone(), state)?;
    d.resume()?;
    Ok((d, sink))
}

#[test]
fn restored_function_is_in_the_saved_state_and_running() {
    let (_old, state) = running();
    let json = serde_json::to_string(&state).unwrap();
    let state: TransportState = serde_json::from_str(&json).unwrap();
    let (mut d, sink) = restore(&state).unwrap();
    assert!(d.is_activated(), "DRIVER_OK was set: the device runs again");
    assert_eq!(d.save_state().unwrap(), state);
    let bars: Vec<u64> = d.bars().iter().map(|b| b.addr).collect();
    assert_eq!(bars, [BAR0, BAR2], "BARs where the guest had them");
    assert_eq!(d.config_read(1) & 0x6, 0x6, "command register");
    for v in 0..2 {
        let msg = sink
            .message(v)
            .expect("every vector programmed into the new VMM");
        assert_eq!(
            (msg.addr, msg.data, msg.masked),
            (0xfee0_0000, 0x40 + u32::from(v), false)
        );
    }
    assert_eq!(r(&mut d, 0x14, 1), 0xf);
    assert_eq!(r(&mut d, 0x1a, 2), 1);
    assert_eq!(r(&mut d, 0x18, 2), 16);
    // The restored device interrupts on the saved vector.
    d.interrupt().trigger(InterruptCause::Queue(0)).unwrap();
    assert_eq!(sink.count(1), 1);
}

#[test]
fn restored_device_starts_only_on_resume() {
    let (_old, state) = running();
    let (fresh, _) = device();
    let sink = Arc::new(CountingMsiSink::default());
    let mut d =
        VirtioPciDevice::restore(Box::new(Rng::new()), fresh.mem.clone(), sink, &state).unwrap();
    assert!(
        !d.is_activated(),
        "no worker (and no interrupt) before resume"
    );
    d.resume().unwrap();
    assert!(d.is_activated());
    d.resume().unwrap();
    assert_eq!(d.save_state().unwrap(), state);
}

#[test]
fn reset_device_restores_inactive() {
    let (d, _) = device();
    let state = d.save_state().unwrap();
    let (d, _) = restore(&state).unwrap();
    assert!(!d.is_activated());
    assert_eq!(d.save_state().unwrap(), state);
}

#[test]
fn corrupted_states_are_refused_with_the_field_named() {
    let (_old, good) = running();
    type Corrupt = fn(&mut TransportState);
    let cases: [(Corrupt, &str); 12] = [
        (|s| s.device_type = 1, "device type"),
        (|s| s.queues[0].size = 1024, "size 1024"),
        (|s| s.queues[0].size = 3, "size 3"),
        (|s| s.queues.push(s.queues[0]), "2 queues"),
        (|s| s.device.common.queues[0].index = 7, "queue 7"),
        (|s| s.queues[0].msix_vector = 2, "vector 2"),
        (|s| s.config_msix_vector = 300, "vector 300"),
        (|s| s.bars[0].addr = BAR0 + 0x100, "not valid for BAR 0"),
        (|s| s.bars[1].addr = 0x4000, "overlaps guest RAM"),
        (|s| s.bars[0].index = 4, "BAR 4 is not implemented"),
        (|s| s.msix.entries.push(Default::default()), "3 entries"),
        (|s| s.status |= 0x40, "status"),
    ];
    for (corrupt, expect) in cases {
        let mut state = good.clone();
        corrupt(&mut state);
        let err = restore(&state)
            .err()
            .expect("corrupt state refused")
            .to_string();
        assert!(err.contains(expect), "{err:?} should mention {expect:?}");
    }
    let mut state = good.clone();
    state.driver_features = 0;
    assert!(matches!(
        restore(&state),
        Err(RestoreError::Negotiation { .. })
    ));
    state = good.clone();
    state.config.pop();
    assert!(matches!(restore(&state), Err(RestoreError::Config(_))));
    state = good.clone();
    state.queues[0].desc = 0xffff_0000;
    assert!(matches!(restore(&state), Err(RestoreError::Activation(_))));
}

fn arb_mutation() -> impl Strategy<Value = (usize, u64)> {
    (
        0usize..16,
        prop_oneof![Just(0u64), Just(u64::MAX), 0u64..0x2_0000, any::<u64>()],
    )
}

#[test]
fn fuzz_transport_state() {
    let (_old, good) = running();
    let json = serde_json::to_vec(&good).unwrap();
    // Arbitrary field values: refused or restored, never a panic.
    fuzz(
        "transport_state_fields",
        400,
        proptest::collection::vec(arb_mutation(), 1..4),
        |muts| {
            let mut s = good.clone();
            for (field, v) in muts {
                let q = &mut s.queues[0];
                match field {
                    0 => q.size = v as u16,
                    1 => q.msix_vector = v as u16,
                    2 => q.desc = v,
                    3 => q.driver = v,
                    4 => q.device = v,
                    5 => s.config_msix_vector = v as u16,
                    6 => s.bars[(v % 2) as usize].addr = v,
                    7 => s.bars[0].index = v as usize,
                    8 => s.status = v as u8,
                    9 => s.driver_features = v,
                    10 => s.device.common.queues[0].index = v as u16,
                    11 => s.device.common.acked_features = v,
                    12 => s.msix.pba.push(v),
                    13 => s.config[(v % 64) as usize] = v as u32,
                    14 => s.device.common.queues[0].next_avail = v as u16,
                    _ => s.queue_select = v as u16,
                }
            }
            let _ = restore(&s);
            Ok(())
        },
    );
    // Corrupted bytes of the state file: a JSON error or a restore error, never a panic.
    fuzz(
        "transport_state_json",
        400,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        |flips| {
            let mut bytes = json.clone();
            for (at, b) in flips {
                bytes[at.index(json.len())] = b;
            }
            if let Ok(s) = serde_json::from_slice::<TransportState>(&bytes) {
                let _ = restore(&s);
            }
            Ok(())
        },
    );
}
