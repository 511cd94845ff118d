//! Tier 2: virtio-balloon under a real Linux guest. Inflating the balloon through the per-VM
//! API (`PUT /balloon`) lowers the VMM's RSS by the requested amount (±10%); `GET /balloon`
//! reports the guest's progress and memory statistics; deflating gives the memory back.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloudphone_tests::{guest_kernel, scratch_dir, Initramfs, VmProcess};

const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const MEMORY_MIB: u32 = 256;
const TARGET_MIB: u64 = 96;
/// Read through the page cache so nearly all guest memory is host-resident (and reclaimable,
/// so the balloon can take it): larger than guest RAM.
const FILL_DISK_BYTES: u64 = 384 << 20;

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

fn balloon_json(vm: &VmProcess) -> serde_json::Value {
    let (code, body) = vm.api("GET", "/balloon", None).unwrap();
    assert_eq!(code, 200, "GET /balloon: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /balloon body {body:?}: {e}"))
}

/// Poll GET /balloon until the driver reports `mib` MiB in the balloon.
fn wait_actual(vm: &VmProcess, mib: u64) -> serde_json::Value {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let v = balloon_json(vm);
        if v["actual_mib"].as_u64() == Some(mib) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "balloon never reached {mib} MiB: {v}\n{}",
            vm.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn inflating_the_balloon_lowers_vmm_rss_by_the_target() {
    let kernel = guest_kernel();
    let dir: PathBuf = scratch_dir("balloon");
    let disk = dir.join("fill.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(FILL_DISK_BYTES)
        .unwrap();
    let initrd = dir.join("initrd.cpio");
    // Keep /dev/vda open: the last close of a block device drops its page cache.
    let script = "exec 3< /dev/vda\ncat /dev/vda > /dev/null\n\
                  echo \"FILLED $(grep -E 'MemFree|^Cached' /proc/meminfo | tr -s ' ' | tr '\\n' ' ')\"\n\
                  sleep 100000\n";
    Initramfs::new()
        .modules(&["virtio_pci", "virtio_blk", "virtio_balloon"])
        .script(script)
        .build(&kernel, &initrd)
        .expect("build initramfs");
    let mut args = VmProcess::boot_args(&kernel, &initrd, 1, MEMORY_MIB);
    args.extend([
        "--disk".into(),
        disk.display().to_string(),
        "--balloon".into(),
    ]);
    let run_dir = std::env::temp_dir().join(format!("cloudphone-balloon-{}", std::process::id()));
    let mut vm = VmProcess::spawn(&run_dir, &args).expect("spawn cloudphone-vmm");
    vm.wait_for_api(BOOT_TIMEOUT).unwrap();
    let filled = vm.wait_for_line("FILLED", BOOT_TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_secs(3));

    let before = vm_rss_kib(vm.pid());
    let (code, body) = vm
        .api(
            "PUT",
            "/balloon",
            Some(&format!("{{\"target_mib\":{TARGET_MIB}}}")),
        )
        .unwrap();
    assert_eq!(code, 200, "PUT /balloon: {body}");
    let status = wait_actual(&vm, TARGET_MIB);
    std::thread::sleep(Duration::from_secs(1));
    let after = vm_rss_kib(vm.pid());
    let dropped_mib = before.saturating_sub(after) as f64 / 1024.0;
    let want = TARGET_MIB as f64;
    assert!(
        (want * 0.9..=want * 1.1).contains(&dropped_mib),
        "RSS {before} -> {after} KiB: dropped {dropped_mib:.1} MiB, want {want} MiB ±10% (guest: {filled}; balloon: {status})\n{}",
        vm.diagnostics()
    );
    assert_eq!(status["target_mib"].as_u64(), Some(TARGET_MIB), "{status}");
    // The stats queue works: the guest reports its memory.
    let total = balloon_json(&vm)["stats"]["total_memory"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        total > u64::from(MEMORY_MIB / 2) << 20 && total <= u64::from(MEMORY_MIB) << 20,
        "total_memory {total}"
    );

    // Too large a target is refused; deflating returns the pages to the guest.
    let (code, body) = vm
        .api("PUT", "/balloon", Some(r#"{"target_mib":100000}"#))
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = vm
        .api("PUT", "/balloon", Some(r#"{"target_mib":0}"#))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_actual(&vm, 0);
}
