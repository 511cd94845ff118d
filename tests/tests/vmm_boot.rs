//! Tier 2: cloudphone-vmm boots the Debian kernel + a busybox initramfs to init, and the guest
//! and the per-VM API behave as vmm/API.md says (vCPU/memory counts, poweroff 0, reboot 32, API
//! status/pause/resume/shutdown through the ACPI power button).

use std::path::PathBuf;
use std::time::Duration;

use cloudphone_tests::{guest_kernel, scratch_dir, Initramfs, VmProcess};

/// Nested KVM under TCG on a shared 2-core host is slow; generous but finite.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);
const CPUS: u32 = 2;
const MEMORY_MIB: u32 = 256;

/// Prints what the guest sees, gives the UART time to drain (tty output is interrupt-driven,
/// so this also proves IRQ 4 works), then runs `then`.
fn report_then(then: &str) -> String {
    format!(
        "echo \"CPUS=$(grep -c ^processor /proc/cpuinfo)\"\n\
         echo \"MEMTOTAL_KB=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo)\"\n\
         echo REPORT_DONE\nsleep 1\n{then}\n"
    )
}

fn boot(test: &str, initramfs: Initramfs) -> VmProcess {
    boot_with(test, initramfs, &[])
}

fn boot_with(test: &str, initramfs: Initramfs, extra: &[&str]) -> VmProcess {
    spawn(test, initramfs, extra, &[])
}

fn boot_with_env(test: &str, initramfs: Initramfs, env: &[(&str, &str)]) -> VmProcess {
    spawn(test, initramfs, &[], env)
}

fn spawn(test: &str, initramfs: Initramfs, extra: &[&str], env: &[(&str, &str)]) -> VmProcess {
    let kernel = guest_kernel();
    let dir: PathBuf = scratch_dir(test);
    let initrd = dir.join("initrd.cpio");
    initramfs.build(&kernel, &initrd).expect("build initramfs");
    let mut args = VmProcess::boot_args(&kernel, &initrd, CPUS, MEMORY_MIB);
    args.extend(extra.iter().map(|a| a.to_string()));
    // The API socket cannot live on the sandbox's 9p share (no socket files there), so the
    // VM's run directory (serial log, VMM log, socket) is on the local /tmp.
    let run_dir = std::env::temp_dir().join(format!("cloudphone-{test}-{}", std::process::id()));
    VmProcess::spawn_with_env(&run_dir, &args, env).expect("spawn cloudphone-vmm")
}

/// The VMM runs under its seccomp filter (vmm/API.md): mode 2, and both of its filters.
fn assert_filtered(vm: &VmProcess) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", vm.pid())).unwrap();
    assert!(
        status.contains("Seccomp:\t2\n") && status.contains("Seccomp_filters:\t2\n"),
        "the VMM is not filtered:\n{status}"
    );
}

fn field(line: &str, key: &str) -> u64 {
    line.split_once(key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number after {key} in {line:?}"))
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn boots_to_init_sees_configured_hardware_and_powers_off() {
    let mut vm = boot(
        "vmm_poweroff",
        Initramfs::new().script(&report_then("poweroff -f")),
    );
    vm.wait_for_line("INIT_READY", BOOT_TIMEOUT).unwrap();
    let cpus = vm.wait_for_line("CPUS=", BOOT_TIMEOUT).unwrap();
    assert_eq!(
        field(&cpus, "CPUS="),
        u64::from(CPUS),
        "{}",
        vm.diagnostics()
    );
    let mem = vm.wait_for_line("MEMTOTAL_KB=", BOOT_TIMEOUT).unwrap();
    let kb = field(&mem, "MEMTOTAL_KB=");
    // MemTotal excludes the kernel image and reserved areas: expect 75-100% of the RAM given.
    let configured_kb = u64::from(MEMORY_MIB) * 1024;
    assert!(
        kb <= configured_kb && kb >= configured_kb * 3 / 4,
        "MemTotal {kb} kB for {MEMORY_MIB} MiB\n{}",
        vm.diagnostics()
    );
    vm.assert_exit(0, BOOT_TIMEOUT);
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn guest_reboot_exits_32() {
    let mut vm = boot(
        "vmm_reboot",
        Initramfs::new().script(&report_then("reboot -f")),
    );
    vm.wait_for_line("REPORT_DONE", BOOT_TIMEOUT).unwrap();
    vm.assert_exit(32, BOOT_TIMEOUT);
}

/// `--on-reboot restart` builds the whole VM again in the same process, under the seccomp
/// filter installed before the first boot: the guest boots a second time (a new boot id).
#[test]
#[ignore = "tier 2: needs working KVM"]
fn reboot_with_restart_boots_again_in_the_same_filtered_process() {
    let script = report_then("echo \"BOOT_ID=$(cat /proc/sys/kernel/random/boot_id)\"\nreboot -f");
    let mut vm = boot_with(
        "vmm_restart",
        Initramfs::new().script(&script),
        &["--on-reboot", "restart"],
    );
    vm.wait_for_serial("a second boot id", BOOT_TIMEOUT * 2, |lines| {
        let mut ids: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split_once("BOOT_ID=").map(|(_, id)| id))
            .collect();
        ids.dedup();
        (ids.len() >= 2).then_some(())
    })
    .unwrap();
    assert!(
        vm.try_exit().unwrap().is_none(),
        "the VMM exited on reboot\n{}",
        vm.diagnostics()
    );
    assert_filtered(&vm);
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn api_status_pause_resume_and_power_button_shutdown() {
    // The ACPI button driver turns the GED notification into KEY_POWER on an evdev node; the
    // guest powers off when it sees any event there.
    let script = "echo WAITING_FOR_POWER_BUTTON\n\
                  head -c 1 /dev/input/event0 >/dev/null && echo POWER_BUTTON_SEEN\n\
                  sleep 1\npoweroff -f\n";
    let mut vm = boot(
        "vmm_api",
        Initramfs::new()
            .modules(&["button", "evdev"])
            .script(script),
    );
    vm.wait_for_api(BOOT_TIMEOUT).unwrap();
    vm.wait_for_line("WAITING_FOR_POWER_BUTTON", BOOT_TIMEOUT)
        .unwrap();

    let (code, body) = vm.api("GET", "/status", None).unwrap();
    assert_eq!(code, 200, "{body}");
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["state"], "running");
    assert_eq!(s["vcpus"], CPUS);
    assert_eq!(s["memory_mib"], MEMORY_MIB);
    assert_eq!(s["pid"], vm.pid());
    assert_filtered(&vm);

    assert_eq!(vm.api("PUT", "/pause", None).unwrap().0, 200);
    let (_, body) = vm.api("GET", "/status", None).unwrap();
    assert!(body.contains("\"paused\""), "{body}");
    assert_eq!(vm.api("PUT", "/resume", None).unwrap().0, 200);
    let (code, body) = vm.api("PUT", "/shutdown", Some("{bad")).unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(vm.api("GET", "/nope", None).unwrap().0, 404);

    let (code, body) = vm
        .api("PUT", "/shutdown", Some(r#"{"timeout_ms": 120000}"#))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    vm.wait_for_line("POWER_BUTTON_SEEN", BOOT_TIMEOUT).unwrap();
    vm.assert_exit(0, BOOT_TIMEOUT);
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn ignored_shutdown_request_is_forced_with_34() {
    // No button driver: the power button goes unanswered, so the VMM forces the stop.
    let mut vm = boot(
        "vmm_hung",
        Initramfs::new().script("echo IDLE\nsleep 100000\n"),
    );
    vm.wait_for_api(BOOT_TIMEOUT).unwrap();
    vm.wait_for_line("IDLE", BOOT_TIMEOUT).unwrap();
    let (code, body) = vm
        .api("PUT", "/shutdown", Some(r#"{"timeout_ms": 2000}"#))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, body) = vm.api("GET", "/status", None).unwrap();
    assert!(body.contains("shutting_down"), "{body}");
    vm.assert_exit(34, BOOT_TIMEOUT);
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn virtio_rng_over_pci_with_msix_feeds_the_guest() {
    // virtio-pci probes 00:05.0 (BAR placement, config space), MSI-X vectors are routed via
    // KVM, the notify ioeventfd wakes the device and the used-ring interrupt wakes the reader.
    let script = "echo \"RNG_CURRENT=$(cat /sys/class/misc/hw_random/rng_current)\"\n\
                  echo \"RNG_BYTES=$(head -c 4096 /dev/hwrng | wc -c)\"\n\
                  echo \"MSIX_IRQS=$(grep -c -i msi /proc/interrupts)\"\n\
                  sleep 1\npoweroff -f\n";
    let kernel = guest_kernel();
    let dir: PathBuf = scratch_dir("vmm_rng");
    let initrd = dir.join("initrd.cpio");
    Initramfs::new()
        .modules(&["virtio_pci", "virtio-rng"])
        .script(script)
        .build(&kernel, &initrd)
        .expect("build initramfs");
    let mut args = VmProcess::boot_args(&kernel, &initrd, 1, MEMORY_MIB);
    args.push("--rng".into());
    let run_dir = std::env::temp_dir().join(format!("cloudphone-vmm_rng-{}", std::process::id()));
    let mut vm = VmProcess::spawn(&run_dir, &args).expect("spawn cloudphone-vmm");
    let current = vm.wait_for_line("RNG_CURRENT=", BOOT_TIMEOUT).unwrap();
    assert!(
        current.contains("virtio_rng"),
        "{current}\n{}",
        vm.diagnostics()
    );
    let bytes = vm.wait_for_line("RNG_BYTES=", BOOT_TIMEOUT).unwrap();
    assert_eq!(field(&bytes, "RNG_BYTES="), 4096, "{}", vm.diagnostics());
    let msix = vm.wait_for_line("MSIX_IRQS=", BOOT_TIMEOUT).unwrap();
    assert!(
        field(&msix, "MSIX_IRQS=") >= 1,
        "no MSI-X interrupts: {msix}\n{}",
        vm.diagnostics()
    );
    vm.assert_exit(0, BOOT_TIMEOUT);
}

#[test]
#[ignore = "tier 2: needs working KVM"]
fn a_device_panic_on_a_guest_write_stops_the_vmm_with_36_within_a_second() {
    // The debug build's test-only fault device (vmm/API.md) panics when the guest writes its
    // port; /dev/port turns the dd below into an `out` to it from a vCPU thread.
    let mut vm = boot_with_env(
        "vmm_fault",
        Initramfs::new().script(
            "echo FAULTING\nprintf x | dd of=/dev/port bs=1 seek=1792 count=1\n\
             echo STILL_RUNNING\nsleep 100000\n",
        ),
        &[("CLOUDPHONE_VMM_TEST_FAULT_PORT", "0x700")],
    );
    vm.wait_for_vmm_log("test fault device: panicking", BOOT_TIMEOUT)
        .unwrap();
    let seen = std::time::Instant::now();
    let code = vm.wait_exit(Duration::from_secs(1)).unwrap();
    assert_eq!(code, Some(36), "VMM exit status\n{}", vm.diagnostics());
    eprintln!("VMM exited {:?} after the fault was logged", seen.elapsed());
    assert!(!vm.serial().contains("STILL_RUNNING"), "{}", vm.serial());
    assert!(vm.vmm_log().contains("panicked"), "{}", vm.vmm_log());
}
