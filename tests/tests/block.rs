//! Tier 2: virtio-blk under a real Linux guest. Data the guest writes to /dev/vda survives a
//! VMM restart (sha256 equal, also read back on the host), a qcow2 overlay takes every write
//! while its raw base keeps its sha256, and `qemu-img check` finds the overlay clean.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cloudphone_tests::{guest_kernel, scratch_dir, Initramfs, VmProcess};
use sha2::{Digest, Sha256};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const MEMORY_MIB: u32 = 256;
const DISK_BYTES: u64 = 32 << 20;
/// Where the guest writes (1 MiB at 8 MiB + 3 KiB: not cluster aligned, so the qcow2 overlay
/// has to copy-on-write partial clusters from the base).
const WRITE_OFFSET: u64 = (8 << 20) + 3 * 1024;
const WRITE_LEN: u64 = 1 << 20;
/// A base region the guest only reads.
const READ_OFFSET: u64 = 4 << 20;
/// A region the guest discards (whole 64 KiB clusters).
const DISCARD_OFFSET: u64 = 16 << 20;
const DISCARD_LEN: u64 = 4 << 20;

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_range_sha(path: &Path, offset: u64, len: u64) -> String {
    let data = std::fs::read(path).unwrap();
    sha256_hex(&data[offset as usize..(offset + len) as usize])
}

/// Deterministic, non-zero base contents.
fn base_pattern(len: u64) -> Vec<u8> {
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Shell that prints the sha256 of `len` bytes of /dev/vda at byte `offset` (512-aligned
/// offsets and lengths; O_DIRECT so the device, not the guest page cache, answers).
fn guest_sha(label: &str, offset: u64, len: u64) -> String {
    format!(
        "echo \"{label}=$(dd if=/dev/vda bs=512 skip={} count={} iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)\"\n",
        offset / 512,
        len / 512
    )
}

fn boot(dir: &Path, run: &str, script: &str, disk: &str) -> VmProcess {
    let kernel = guest_kernel();
    let initrd = dir.join(format!("{run}.cpio"));
    Initramfs::new()
        .modules(&["virtio_pci", "virtio_blk"])
        .script(script)
        .build(&kernel, &initrd)
        .expect("build initramfs");
    let mut args = VmProcess::boot_args(&kernel, &initrd, 1, MEMORY_MIB);
    args.extend(["--disk".to_string(), disk.to_string()]);
    let run_dir: PathBuf =
        std::env::temp_dir().join(format!("cloudphone-blk-{run}-{}", std::process::id()));
    VmProcess::spawn(&run_dir, &args).expect("spawn cloudphone-vmm")
}

/// The value the guest printed as `KEY=value` (`wait_for_line` returns only complete lines).
fn value(vm: &mut VmProcess, key: &str) -> String {
    let marker = format!("{key}=");
    let line = vm.wait_for_line(&marker, BOOT_TIMEOUT).unwrap();
    line[line.find(&marker).expect("marker in its line") + marker.len()..]
        .trim()
        .to_string()
}

/// Writes 1 MiB of fresh random data, prints its sha256, flushes, powers off.
fn writer_script(extra: &str) -> String {
    format!(
        "echo \"SERIAL=$(cat /sys/block/vda/serial)\"\n\
         echo \"SECTORS=$(cat /sys/block/vda/size)\"\n\
         head -c {WRITE_LEN} /dev/urandom > /data.bin\n\
         dd if=/data.bin of=/dev/vda bs=1024 seek={} conv=notrunc,fsync 2>/dev/null\n\
         echo \"WROTE=$(sha256sum /data.bin | cut -d' ' -f1)\"\n\
         {extra}sync\necho WRITER_DONE\nsleep 1\npoweroff -f\n",
        WRITE_OFFSET / 1024
    )
}

fn reader_script(extra: &str) -> String {
    format!(
        "{}{extra}echo READER_DONE\nsleep 1\npoweroff -f\n",
        guest_sha("READ", WRITE_OFFSET, WRITE_LEN)
    )
}

fn run_to_poweroff(mut vm: VmProcess, done: &str) -> VmProcess {
    vm.wait_for_line(done, BOOT_TIMEOUT).unwrap();
    assert_eq!(
        vm.wait_exit(BOOT_TIMEOUT).unwrap(),
        Some(0),
        "{}",
        vm.diagnostics()
    );
    vm
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn raw_disk_data_survives_a_vmm_restart() {
    let dir = scratch_dir("blk_raw");
    let disk = dir.join("data.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();
    let spec = format!("{},id=phone-data", disk.display());

    let mut vm = boot(&dir, "raw-1", &writer_script(""), &spec);
    assert_eq!(
        value(&mut vm, "SERIAL"),
        "phone-data",
        "GET_ID\n{}",
        vm.diagnostics()
    );
    assert_eq!(value(&mut vm, "SECTORS"), (DISK_BYTES / 512).to_string());
    let wrote = value(&mut vm, "WROTE");
    run_to_poweroff(vm, "WRITER_DONE");
    assert_eq!(
        file_range_sha(&disk, WRITE_OFFSET, WRITE_LEN),
        wrote,
        "host file lacks the guest's data"
    );

    let mut vm = boot(&dir, "raw-2", &reader_script(""), &spec);
    assert_eq!(
        value(&mut vm, "READ"),
        wrote,
        "data lost across the VMM restart\n{}",
        vm.diagnostics()
    );
    run_to_poweroff(vm, "READER_DONE");
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn qcow2_overlay_takes_guest_writes_and_the_base_never_changes() {
    let dir = scratch_dir("blk_qcow2");
    let base = dir.join("base.raw");
    let overlay = dir.join("phone.qcow2");
    std::fs::write(&base, base_pattern(DISK_BYTES)).unwrap();
    let base_sha = file_range_sha(&base, 0, DISK_BYTES);
    let spec = format!("{},overlay={},id=system", base.display(), overlay.display());

    let zeros_sha = sha256_hex(&vec![0u8; DISCARD_LEN as usize]);
    let discard = format!(
        "blkdiscard -o {DISCARD_OFFSET} -l {DISCARD_LEN} /dev/vda && echo DISCARDED\n{}",
        guest_sha("AFTER_DISCARD", DISCARD_OFFSET, DISCARD_LEN)
    );
    let extra = format!(
        "{}{discard}",
        guest_sha("BASE_READ", READ_OFFSET, WRITE_LEN)
    );
    let mut vm = boot(&dir, "qcow2-1", &writer_script(&extra), &spec);
    let wrote = value(&mut vm, "WROTE");
    assert_eq!(
        value(&mut vm, "BASE_READ"),
        file_range_sha(&base, READ_OFFSET, WRITE_LEN),
        "overlay does not read through to the base"
    );
    assert_eq!(
        value(&mut vm, "AFTER_DISCARD"),
        zeros_sha,
        "discarded clusters must read as zeros"
    );
    run_to_poweroff(vm, "WRITER_DONE");

    assert_eq!(
        file_range_sha(&base, 0, DISK_BYTES),
        base_sha,
        "the base image changed"
    );
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&overlay)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && report.contains("No errors"),
        "qemu-img check:\n{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // QEMU reads the guest's data out of our overlay.
    let flat = dir.join("flat.raw");
    let convert = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&overlay)
        .arg(&flat)
        .output()
        .unwrap();
    assert!(
        convert.status.success(),
        "{}",
        String::from_utf8_lossy(&convert.stderr)
    );
    assert_eq!(file_range_sha(&flat, WRITE_OFFSET, WRITE_LEN), wrote);

    let mut vm = boot(
        &dir,
        "qcow2-2",
        &reader_script(&guest_sha("BASE_READ", READ_OFFSET, WRITE_LEN)),
        &spec,
    );
    assert_eq!(
        value(&mut vm, "READ"),
        wrote,
        "overlay data lost across the VMM restart\n{}",
        vm.diagnostics()
    );
    assert_eq!(
        value(&mut vm, "BASE_READ"),
        file_range_sha(&base, READ_OFFSET, WRITE_LEN)
    );
    run_to_poweroff(vm, "READER_DONE");
    assert_eq!(
        file_range_sha(&base, 0, DISK_BYTES),
        base_sha,
        "the base image changed"
    );
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn a_second_vmm_given_the_same_overlay_exits_37_naming_the_disk() {
    let dir = scratch_dir("blk_in_use");
    let base = dir.join("base.raw");
    let overlay = dir.join("phone.qcow2");
    let _ = std::fs::remove_file(&overlay);
    std::fs::write(&base, base_pattern(DISK_BYTES)).unwrap();
    let spec = format!("{},overlay={}", base.display(), overlay.display());
    let holder_script = "echo \"HOLDING=$(cat /sys/block/vda/size)\"\nsleep 100000\n";
    let mut holder = boot(&dir, "in-use-1", holder_script, &spec);
    value(&mut holder, "HOLDING");

    let mut second = boot(&dir, "in-use-2", "echo SECOND_BOOTED\npoweroff -f\n", &spec);
    assert_eq!(
        second.wait_exit(BOOT_TIMEOUT).unwrap(),
        Some(37),
        "{}",
        second.diagnostics()
    );
    let log = second.vmm_log();
    assert!(
        log.contains("disk in use by another VMM") && log.contains("phone.qcow2"),
        "{log}"
    );
    assert!(!second.serial().contains("SECOND_BOOTED"));
    // The holder is unaffected: its guest still runs.
    assert_eq!(holder.try_exit().unwrap(), None, "{}", holder.diagnostics());
}
