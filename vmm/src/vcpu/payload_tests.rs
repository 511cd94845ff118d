//! Tier-1 tests: tiny real-mode payloads (a few bytes of machine code) through the real vCPU
//! run loop and buses, on any /dev/kvm. This host's PVM KVM runs them too, except the triple
//! fault, which PVM takes ~95 s to report: that one runs only on a standard KVM (the sandbox).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{kick, Request, Vcpu, VcpuContext, VcpuOutcome};
use crate::bus::BusDevice;
use crate::exit::{ExitSignal, GuestExit};
use crate::legacy::{PowerManagement, SerialDevice};
use crate::memory::{create_guest_memory, register_with_kvm, GuestMemoryMmap};

const CODE: u64 = 0x1000;
const RAM: u64 = 0x10000;

struct TestVm {
    vm: VmFd,
    mem: GuestMemoryMmap,
    ctx: Arc<VcpuContext>,
}

/// A VM without in-kernel irqchip (so HLT exits to us) and 64 KiB of RAM holding `code`;
/// None when there is no KVM, or the host is PVM and `pvm_ok` is false.
fn test_vm(code: &[u8], pvm_ok: bool) -> Option<TestVm> {
    test_vm_with_ram(code, pvm_ok, RAM)
}

/// [`test_vm`] with `ram` bytes of RAM from address 0.
fn test_vm_with_ram(code: &[u8], pvm_ok: bool, ram: u64) -> Option<TestVm> {
    let Ok(kvm) = Kvm::new() else {
        eprintln!("no /dev/kvm: payload test skipped (tier 1 needs KVM)");
        return None;
    };
    if !pvm_ok && crate::kvm::is_pvm_host(std::path::Path::new("/sys/module")) {
        eprintln!("PVM /dev/kvm: this payload needs a standard KVM; run under scripts/kvm-sandbox");
        return None;
    }
    let vm = kvm.create_vm().unwrap();
    let mem = create_guest_memory(ram).unwrap();
    register_with_kvm(&vm, &mem).unwrap();
    mem.write_slice(code, GuestAddress(CODE)).unwrap();
    let ctx = Arc::new(VcpuContext::new(Arc::new(ExitSignal::default())));
    Some(TestVm { vm, mem, ctx })
}

impl TestVm {
    fn vcpu(&self, id: u8, rax: u64) -> Vcpu {
        let fd = self.vm.create_vcpu(u64::from(id)).unwrap();
        let mut sregs = fd.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        fd.set_sregs(&sregs).unwrap();
        let regs = kvm_bindings::kvm_regs {
            rip: CODE,
            rax,
            rflags: 2,
            ..Default::default()
        };
        fd.set_regs(&regs).unwrap();
        Vcpu {
            id,
            fd,
            ctx: self.ctx.clone(),
        }
    }

    fn add(&self, pio: bool, dev: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) {
        let bus = if pio { &self.ctx.pio } else { &self.ctx.mmio };
        bus.write().unwrap().insert(dev, base, len).unwrap();
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Answers reads with a fixed byte and records writes.
#[derive(Default)]
struct Probe {
    writes: Vec<(u64, u8)>,
}

impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data[0]));
    }
}

#[test]
fn serial_output_from_port_io() {
    // mov dx,0x3f8; mov al,'O'; out dx,al; mov al,'K'; out dx,al; mov al,10; out dx,al; hlt
    let code = [
        0xba, 0xf8, 0x03, 0xb0, b'O', 0xee, 0xb0, b'K', 0xee, 0xb0, 10, 0xee, 0xf4,
    ];
    let Some(t) = test_vm(&code, true) else {
        return;
    };
    let cap = Capture::default();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let serial = SerialDevice::with_writer(Box::new(cap.clone()), irq);
    t.add(true, Arc::new(Mutex::new(serial)), 0x3f8, 8);
    assert_eq!(t.vcpu(0, 0).run_loop(), VcpuOutcome::Halted);
    assert_eq!(cap.0.lock().unwrap().as_slice(), b"OK\n");
}

#[test]
fn a_panicking_device_handler_stops_the_vm_with_its_exit_code() {
    // mov dx,0x600; out dx,al; hlt
    let Some(t) = test_vm(&[0xba, 0x00, 0x06, 0xee, 0xf4], true) else {
        return;
    };
    let fault = crate::legacy::test_fault::FaultDevice;
    t.add(true, Arc::new(Mutex::new(fault)), 0x600, 1);
    let started = std::time::Instant::now();
    assert_eq!(t.vcpu(0, 0).run_loop(), VcpuOutcome::GuestExited);
    assert_eq!(t.ctx.exit.get(), Some(GuestExit::DevicePanic));
    assert_eq!(GuestExit::DevicePanic.code(), 36);
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn mmio_read_and_write_exits() {
    // mov ax,0x1800; mov ds,ax; mov al,[0]; add al,1; mov [1],al; hlt   (MMIO at 0x18000)
    let code = [
        0xb8, 0x00, 0x18, 0x8e, 0xd8, 0xa0, 0x00, 0x00, 0x04, 0x01, 0xa2, 0x01, 0x00, 0xf4,
    ];
    let Some(t) = test_vm(&code, true) else {
        return;
    };
    let probe = Arc::new(Mutex::new(Probe::default()));
    t.add(false, probe.clone(), 0x18000, 0x10);
    assert_eq!(t.vcpu(0, 0).run_loop(), VcpuOutcome::Halted);
    assert_eq!(probe.lock().unwrap().writes, vec![(1, 0x5b)]);
}

#[test]
fn two_vcpus_start_and_run() {
    // mov dx,0x500; out dx,al; hlt   (al = 0x40 + vCPU id, set by the test)
    let code = [0xba, 0x00, 0x05, 0xee, 0xf4];
    let Some(t) = test_vm(&code, true) else {
        return;
    };
    let probe = Arc::new(Mutex::new(Probe::default()));
    t.add(true, probe.clone(), 0x500, 1);
    let threads: Vec<_> = (0..2u8)
        .map(|id| {
            let v = t.vcpu(id, 0x40 + u64::from(id));
            std::thread::spawn(move || v.run_loop())
        })
        .collect();
    for th in threads {
        assert_eq!(th.join().unwrap(), VcpuOutcome::Halted);
    }
    let seen: BTreeSet<u8> = probe.lock().unwrap().writes.iter().map(|w| w.1).collect();
    assert_eq!(seen, BTreeSet::from([0x40, 0x41]));
}

#[test]
fn jump_to_reset_vector_reboots_through_acpi_reset_register() {
    // ljmp 0xf000:0xfff0, as Linux's `reboot=bios` path does after leaving long mode.
    // 1 MiB of RAM so that the BIOS area holding the reset vector is backed.
    let Some(t) = test_vm_with_ram(&[0xea, 0xf0, 0xff, 0x00, 0xf0], true, 0x10_0000) else {
        return;
    };
    crate::arch::x86_64::reset_vector::write_reset_vector(&t.mem).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let pm = PowerManagement::new(t.ctx.exit.clone(), irq);
    let (base, len) = crate::acpi::PM_PORTS;
    t.add(true, Arc::new(Mutex::new(pm)), base.into(), len.into());
    let outcome = t.vcpu(0, 0).run_loop();
    assert_eq!(t.ctx.exit.get(), Some(GuestExit::Reboot), "{outcome:?}");
}

#[test]
#[ignore = "tier 2: needs a standard KVM (PVM reports triple faults only after ~95 s)"]
fn triple_fault_is_a_crash() {
    // int3 with a zero-limit IDT: #GP, #DF, triple fault -> KVM_EXIT_SHUTDOWN.
    let Some(t) = test_vm(&[0xcc], false) else {
        return;
    };
    let v = t.vcpu(0, 0);
    let mut sregs = v.fd.get_sregs().unwrap();
    sregs.idt.limit = 0;
    v.fd.set_sregs(&sregs).unwrap();
    assert_eq!(v.run_loop(), VcpuOutcome::GuestExited);
    assert_eq!(t.ctx.exit.get(), Some(GuestExit::Crash));
}

#[test]
fn spinning_vcpu_pauses_and_stops_on_kick() {
    let Some(t) = test_vm(&[0xeb, 0xfe], true) else {
        return;
    }; // jmp $
    kick::install_handler().unwrap();
    let v = t.vcpu(0, 0);
    let th = std::thread::spawn(move || v.run_loop());
    let pthread = {
        use std::os::unix::thread::JoinHandleExt;
        th.as_pthread_t()
    };
    std::thread::sleep(Duration::from_millis(50));
    t.ctx.control.set(Request::Pause);
    kick::kick(pthread);
    assert!(
        t.ctx.control.wait_parked(1, Duration::from_secs(10)),
        "vCPU did not park"
    );
    t.ctx.control.set(Request::Stop);
    assert_eq!(th.join().unwrap(), VcpuOutcome::Stopped);
}

#[test]
fn a_guest_hammering_a_bad_mmio_address_gets_a_bounded_log() {
    // mov ax,0x1800; mov ds,ax; mov cx,10000; l: mov [0],al; loop l; hlt   (no device there)
    let code = [
        0xb8, 0x00, 0x18, 0x8e, 0xd8, 0xb9, 0x10, 0x27, 0xa2, 0x00, 0x00, 0xe2, 0xfb, 0xf4,
    ];
    let Some(t) = test_vm(&code, true) else {
        return;
    };
    let cap = Capture::default();
    let writer = cap.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let outcome = tracing::subscriber::with_default(subscriber, || t.vcpu(0, 0).run_loop());
    assert_eq!(outcome, VcpuOutcome::Halted);
    let log = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unclaimed MMIO write"))
        .collect();
    // 10000 writes: the first 16, then the 4096th and the 8192nd, each with its count.
    assert_eq!(lines.len(), 18, "{log}");
    assert!(lines[17].contains("occurrences=8192"), "{}", lines[17]);
    assert!(log.len() < 4096, "{} bytes of log", log.len());
}
