//! Tier 2: the test phone image boots through the Android boot path. `cloudphone-vmm
//! --boot-img boot.img --vendor-boot vendor_boot.img` assembles kernel, vendor + generic
//! ramdisks and bootconfig like a bootloader; inside the guest, /proc/cmdline holds the boot
//! header's cmdline and our androidboot.* values, the vendor ramdisk's modules are loaded, and
//! the GPT partitions of the attached disk appear by name. Needs `scripts/build-test-image`.

use std::path::PathBuf;
use std::time::Duration;

use cloudphone_tests::{cache_dir, VmProcess};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
/// The cmdline `scripts/build-test-image` writes into boot.img's header.
const HEADER_CMDLINE: &str = "console=hvc0 panic=-1 loglevel=4";
/// Bootconfig values of vendor_boot.img that must reach the guest.
const ANDROIDBOOT: [&str; 3] =
    ["androidboot.hardware=cloudphone", "androidboot.cloudphone.profile=phone-720p", "androidboot.slot_suffix=_a"];
/// Modules of the vendor ramdisk (names as /proc/modules prints them).
const MODULES: [&str; 9] = [
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_input",
    "virtio_gpu",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
    "virtio_net",
    "virtio_balloon",
];
const PARTITIONS: [&str; 12] = [
    "misc", "boot_a", "boot_b", "init_boot_a", "init_boot_b", "vendor_boot_a", "vendor_boot_b",
    "vbmeta_a", "vbmeta_b", "super", "userdata", "metadata",
];

fn test_image() -> PathBuf {
    let dir = cache_dir().join("test-image");
    assert!(dir.join("boot.img").exists(), "no test image in {}: run scripts/build-test-image", dir.display());
    dir
}

/// The rest of the serial line starting with `key `.
fn field(serial: &str, key: &str) -> String {
    serial
        .lines()
        .find_map(|l| l.trim_end_matches('\r').split_once(&format!("{key} ")).map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| panic!("guest printed no {key} line:\n{serial}"))
}

/// Boots the test image from boot.img + vendor_boot.img (plus `extra` VMM options) and
/// returns everything the guest printed up to its init's `CLOUDPHONE_INIT_OK`.
fn boot_test_image(run: &str, extra: &[String]) -> String {
    let img = test_image();
    let arg = |name: &str| img.join(name).display().to_string();
    let mut args: Vec<String> = vec![
        "--boot-img".into(),
        arg("boot.img"),
        "--vendor-boot".into(),
        arg("vendor_boot.img"),
        "--cmdline".into(),
        "console=ttyS0".into(),
        "--cpus".into(),
        "1".into(),
        "--memory".into(),
        "512".into(),
    ];
    args.extend_from_slice(extra);
    let run_dir = std::env::temp_dir().join(format!("cloudphone-android-{run}-{}", std::process::id()));
    let mut vm = VmProcess::spawn(&run_dir, &args).expect("spawn cloudphone-vmm");
    vm.wait_for_line("CLOUDPHONE_INIT_OK", BOOT_TIMEOUT).unwrap();
    let serial = vm.serial();
    drop(vm);
    let _ = std::fs::remove_dir_all(&run_dir);
    serial
}

#[test]
#[ignore = "tier 2: boots the test phone image from boot.img + vendor_boot.img under cloudphone-vmm"]
fn boot_img_cmdline_bootconfig_and_vendor_modules_reach_the_guest() {
    let serial = boot_test_image("cmdline", &[]);
    let cmdline = field(&serial, "CLOUDPHONE_CMDLINE");
    assert!(cmdline.contains(HEADER_CMDLINE), "header cmdline missing from /proc/cmdline: {cmdline}");
    for value in ANDROIDBOOT {
        assert!(cmdline.split_whitespace().any(|w| w == value), "{value} missing from /proc/cmdline: {cmdline}");
    }
    let loaded = field(&serial, "CLOUDPHONE_MODULES");
    for m in MODULES {
        assert!(loaded.split_whitespace().any(|l| l == m), "module {m} not loaded from the vendor ramdisk: {loaded}");
    }
    assert!(!serial.contains("CLOUDPHONE_MODULE_FAILED"), "a vendor module failed to load:\n{serial}");
}

#[test]
#[ignore = "tier 2: boots the test phone image with its GPT disk attached (needs virtio-blk in cloudphone-vmm)"]
fn gpt_partitions_of_the_phone_disk_appear_by_name() {
    let disk = format!("{},ro", test_image().join("disk.img").display());
    let serial = boot_test_image("gpt", &["--disk".into(), disk]);
    let parts: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("CLOUDPHONE_PART ").map(|(_, v)| v))
        .filter_map(|v| v.split_whitespace().nth(1))
        .collect();
    for p in PARTITIONS {
        assert!(parts.contains(&p), "GPT partition {p} not seen by the guest (saw {parts:?})");
    }
}
