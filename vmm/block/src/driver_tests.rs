//! Tier-1 tests with `virtio-drivers`' VirtIOBlk as the guest driver, through the real
//! virtio-pci transport (cloudphone-virtio's `testing` harness).

use std::time::Duration;

use cloudphone_virtio::testing::{run_with_timeout, TestHal, TestHarness};
use virtio_drivers::device::blk::VirtIOBlk;

use crate::testutil::{pattern, TempDir};
use crate::{Block, DiskSpec};

const TIMEOUT: Duration = Duration::from_secs(20);

fn harness(spec: &DiskSpec) -> TestHarness {
    TestHarness::new(Box::new(Block::from_spec(spec).unwrap())).unwrap()
}

#[test]
fn driver_reads_writes_flushes_and_gets_id_on_a_raw_disk() {
    let dir = TempDir::new("drv-raw");
    let path = dir.path("disk.raw");
    let data = pattern(11, 4 << 20);
    std::fs::write(&path, &data).unwrap();
    let spec: DiskSpec = format!("{},id=phone-data", path.display()).parse().unwrap();
    let h = harness(&spec);
    let transport = h.transport();
    let expect = data.clone();
    run_with_timeout(TIMEOUT, move || {
        let mut blk = VirtIOBlk::<TestHal, _>::new(transport).unwrap();
        assert_eq!(blk.capacity(), 8192);
        assert!(!blk.readonly());
        let mut buf = vec![0u8; 64 * 1024];
        blk.read_blocks(100, &mut buf).unwrap();
        assert_eq!(buf, expect[100 * 512..100 * 512 + buf.len()]);
        let payload = pattern(12, 32 * 1024);
        blk.write_blocks(8000, &payload).unwrap();
        blk.flush().unwrap();
        let mut back = vec![0u8; payload.len()];
        blk.read_blocks(8000, &mut back).unwrap();
        assert_eq!(back, payload);
        let mut id = [0u8; 20];
        let n = blk.device_id(&mut id).unwrap();
        assert_eq!(&id[..n], b"phone-data");
        // Past the end: the driver gets an I/O error, the device keeps working.
        assert!(blk.read_blocks(8192, &mut [0u8; 512]).is_err());
        blk.read_blocks(0, &mut back[..512]).unwrap();
    });
    assert!(!h.needs_reset());
    assert!(h.msi().count(TestHarness::queue_vector(0)) > 0);
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(
        on_disk[8000 * 512..8000 * 512 + 32 * 1024],
        pattern(12, 32 * 1024)[..]
    );
}

#[test]
fn driver_writes_land_in_the_qcow2_overlay_and_the_base_never_changes() {
    let dir = TempDir::new("drv-qcow2");
    let base = dir.path("base.raw");
    let overlay = dir.path("phone.qcow2");
    let data = pattern(21, 2 << 20);
    std::fs::write(&base, &data).unwrap();
    let spec: DiskSpec = format!("{},overlay={}", base.display(), overlay.display())
        .parse()
        .unwrap();
    for round in 0..2u64 {
        let h = harness(&spec);
        let transport = h.transport();
        run_with_timeout(TIMEOUT, move || {
            let mut blk = VirtIOBlk::<TestHal, _>::new(transport).unwrap();
            let payload = pattern(100 + round, 12 * 512);
            blk.write_blocks(7 + round as usize * 1000, &payload)
                .unwrap();
            blk.flush().unwrap();
            let mut back = vec![0u8; payload.len()];
            blk.read_blocks(7 + round as usize * 1000, &mut back)
                .unwrap();
            assert_eq!(back, payload);
            if round == 1 {
                // The first round's write survived the device being torn down and reopened.
                blk.read_blocks(7, &mut back).unwrap();
                assert_eq!(back, pattern(100, 12 * 512));
            }
        });
        assert!(!h.needs_reset());
    }
    assert_eq!(
        std::fs::read(&base).unwrap(),
        data,
        "the base image changed"
    );
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-q"])
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn read_only_disk_is_advertised_and_writes_fail() {
    let dir = TempDir::new("drv-ro");
    let path = dir.path("ro.raw");
    std::fs::write(&path, vec![5u8; 1 << 20]).unwrap();
    let spec: DiskSpec = format!("{},ro", path.display()).parse().unwrap();
    let h = harness(&spec);
    let transport = h.transport();
    run_with_timeout(TIMEOUT, move || {
        let mut blk = VirtIOBlk::<TestHal, _>::new(transport).unwrap();
        assert!(blk.readonly());
        assert!(blk.write_blocks(0, &[0u8; 512]).is_err());
        let mut buf = [0u8; 512];
        blk.read_blocks(0, &mut buf).unwrap();
        assert_eq!(buf, [5u8; 512]);
    });
    assert_eq!(std::fs::read(&path).unwrap(), vec![5u8; 1 << 20]);
}

/// Snapshot/restore under the block driver: the restored device reopens the same disk and
/// the same driver reads what it wrote before and writes on.
#[test]
fn driver_continues_after_snapshot_restore() {
    let dir = TempDir::new("drv-snap");
    let path = dir.path("disk.raw");
    std::fs::write(&path, pattern(31, 1 << 20)).unwrap();
    let spec: DiskSpec = path.display().to_string().parse().unwrap();
    let h = harness(&spec);
    let transport = h.transport();
    let before = pattern(32, 8 * 512);
    let written = before.clone();
    let blk = run_with_timeout(TIMEOUT, move || {
        let mut blk = VirtIOBlk::<TestHal, _>::new(transport).unwrap();
        blk.write_blocks(40, &written).unwrap();
        blk
    });
    let state = h
        .snapshot_restore(|| Box::new(Block::from_spec(&spec).unwrap()))
        .unwrap();
    assert_eq!(
        state.device.device, None,
        "block saves the common state only"
    );
    let after = pattern(33, 4 * 512);
    let expect = after.clone();
    run_with_timeout(TIMEOUT, move || {
        let mut blk = blk;
        let mut back = vec![0u8; before.len()];
        blk.read_blocks(40, &mut back).unwrap();
        assert_eq!(back, before);
        blk.write_blocks(100, &after).unwrap();
        blk.flush().unwrap();
    });
    assert!(!h.needs_reset());
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk[100 * 512..104 * 512], expect[..]);
}
