//! The initramfs builder itself, checked by booting it under QEMU (TCG, no KVM needed): the
//! tier-2 tests all stand on it, so a broken builder must fail here, not as a mystery there.

use std::process::Command;

use cloudphone_tests::{guest_kernel, scratch_dir, Initramfs};

#[test]
#[ignore = "boots QEMU TCG (~15 s); run by scripts/test"]
fn qemu_boots_our_initramfs_and_loads_modules() {
    let kernel = guest_kernel();
    let dir = scratch_dir("initramfs-smoke");
    let initrd = dir.join("initrd.cpio");
    Initramfs::new()
        .modules(&["virtio_pci", "virtio_console"])
        .script("grep -c ^processor /proc/cpuinfo | sed 's/^/CPUS=/'\nlsmod | grep -q virtio_console && echo MODULES_OK\npoweroff -f\n")
        .build(&kernel, &initrd)
        .unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg("qemu-system-x86_64")
        .args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-smp",
            "2",
            "-m",
            "512",
            "-nodefaults",
        ])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1"])
        .output()
        .expect("run qemu-system-x86_64 (apt-get install qemu-system-x86)");
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(serial.contains("INIT_READY"), "no INIT_READY:\n{serial}");
    assert!(
        serial.contains("CPUS=2"),
        "guest did not see 2 CPUs:\n{serial}"
    );
    assert!(
        serial.contains("MODULES_OK"),
        "modules not loaded:\n{serial}"
    );
}
