//! Tier-1 snapshot round trip on any /dev/kvm: a real-mode payload counts in a register and in
//! RAM, is paused, snapshotted through the real vCPU threads, and goes on counting in a second
//! VM restored from the files, while the snapshot's memory file stays untouched.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::Kvm;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::bus::BusDevice;
use crate::exit::ExitSignal;
use crate::memory::{create_guest_memory, register_with_kvm, GuestMemoryMmap};
use crate::vcpu::{kick, Request, Vcpu, VcpuContext, VcpuOutcome};

const CODE: u64 = 0x1000;
const COUNTER: u64 = 0x3000;
const PORT: u64 = 0x10;
/// loop: inc word [0x3000]; inc bx; mov ax,bx; out 0x10,al; jmp loop
const PAYLOAD: [u8; 11] = [
    0xff, 0x06, 0x00, 0x30, 0x43, 0x89, 0xd8, 0xe6, 0x10, 0xeb, 0xf5,
];
const RAM: u64 = 64 << 20;

/// Records every byte written to its port.
#[derive(Default)]
struct Recorder(Vec<u8>);

impl BusDevice for Recorder {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        self.0.push(data[0]);
    }
}

struct Running {
    ctx: Arc<VcpuContext>,
    recorder: Arc<Mutex<Recorder>>,
    thread: std::thread::JoinHandle<VcpuOutcome>,
}

fn start(vcpu: Vcpu, recorder: Arc<Mutex<Recorder>>) -> Running {
    let ctx = vcpu.ctx.clone();
    ctx.pio
        .write()
        .unwrap()
        .insert(recorder.clone(), PORT, 1)
        .unwrap();
    Running {
        ctx,
        recorder,
        thread: std::thread::spawn(move || vcpu.run_loop()),
    }
}

impl Running {
    fn wait_writes(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.recorder.lock().unwrap().0.len() < n {
            assert!(Instant::now() < deadline, "the payload stopped writing");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kick(&self) {
        use std::os::unix::thread::JoinHandleExt;
        kick::kick(self.thread.as_pthread_t());
    }

    fn pause(&self) {
        self.ctx.control.set(Request::Pause);
        self.kick();
        assert!(self.ctx.control.wait_parked(1, Duration::from_secs(10)));
    }

    fn stop(self) -> Vec<u8> {
        self.ctx.control.set(Request::Stop);
        self.kick();
        assert_eq!(self.thread.join().unwrap(), VcpuOutcome::Stopped);
        let writes = std::mem::take(&mut self.recorder.lock().unwrap().0);
        writes
    }
}

fn new_vcpu(kvm: &Kvm, vm: &kvm_ioctls::VmFd, ctx: &Arc<VcpuContext>) -> Vcpu {
    let fd = vm.create_vcpu(0).unwrap();
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    fd.set_cpuid2(&crate::arch::x86_64::cpuid::vcpu_cpuid(&supported, 0, 1))
        .unwrap();
    Vcpu {
        id: 0,
        fd,
        ctx: ctx.clone(),
    }
}

fn counter(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(COUNTER)).unwrap()
}

#[test]
fn paused_payload_restores_and_continues_in_a_new_vm() {
    let Ok(kvm) = crate::kvm::open_kvm_unchecked() else {
        eprintln!("no /dev/kvm: snapshot payload test skipped (tier 1 needs KVM)");
        return;
    };
    kick::install_handler().unwrap();
    let dir = std::env::temp_dir().join(format!("cp-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (state_path, mem_path) = paths(&dir);

    // The original VM: run, pause, snapshot through the parked vCPU thread.
    let vm = crate::kvm::create_vm(&kvm).unwrap();
    let mem = create_guest_memory(RAM).unwrap();
    register_with_kvm(&vm, &mem).unwrap();
    mem.write_slice(&PAYLOAD, GuestAddress(CODE)).unwrap();
    let ctx = Arc::new(VcpuContext::new(Arc::new(ExitSignal::default())));
    let vcpu = new_vcpu(&kvm, &vm, &ctx);
    let mut sregs = vcpu.fd.get_sregs().unwrap();
    (sregs.cs.base, sregs.cs.selector) = (0, 0);
    vcpu.fd.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rflags: 2,
        ..Default::default()
    };
    vcpu.fd.set_regs(&regs).unwrap();
    let run = start(vcpu, Arc::default());
    run.wait_writes(40);
    run.pause();
    {
        let mut saved = ctx.saved.lock().unwrap();
        saved.msr_list = vcpu::msr_indices(&kvm).unwrap();
        saved.xsave_words = vcpu::xsave_words(&kvm);
    }
    assert!(ctx.control.save_all(1, Duration::from_secs(10)));
    let state = ctx.saved.lock().unwrap().states[0].take().unwrap().unwrap();
    let snapshot = VmSnapshot {
        memory_bytes: RAM,
        vcpus: vec![state],
        vm: VmState::save(&vm).unwrap(),
        legacy: LegacyState::default(),
        pci_slots: Vec::new(),
    };
    memory::save(&mem, &mem_path).unwrap();
    file::write(&state_path, &snapshot).unwrap();
    let at_snapshot = counter(&mem);
    let before = run.stop();
    let last = *before.last().unwrap();
    // A kick can land between the RAM increment and the port write: one count ahead at most.
    let ahead = usize::from(at_snapshot) - before.len();
    assert!(
        ahead <= 1,
        "RAM count {at_snapshot} vs {} port writes",
        before.len()
    );
    drop((vm, mem));

    // A second VM from the files alone: registers, RAM and interrupt state come back.
    let snap = load(&dir).unwrap();
    let vm2 = crate::kvm::create_vm(&kvm).unwrap();
    let mem2 = memory::map_private(&mem_path, snap.memory_bytes).unwrap();
    register_with_kvm(&vm2, &mem2).unwrap();
    snap.vm.restore(&vm2).unwrap();
    let ctx2 = Arc::new(VcpuContext::new(Arc::new(ExitSignal::default())));
    let vcpu2 = new_vcpu(&kvm, &vm2, &ctx2);
    snap.vcpus[0].restore(&kvm, &vcpu2.fd).unwrap();
    let run2 = start(vcpu2, Arc::default());
    run2.wait_writes(10);
    let after = run2.stop();
    assert_eq!(
        after[0],
        last.wrapping_add(1),
        "BX continues from the snapshot"
    );
    assert!(
        counter(&mem2) >= at_snapshot + 10,
        "RAM continues from the snapshot"
    );
    let mut word = [0u8; 2];
    std::os::unix::fs::FileExt::read_exact_at(
        &std::fs::File::open(&mem_path).unwrap(),
        &mut word,
        COUNTER,
    )
    .unwrap();
    assert_eq!(
        u16::from_le_bytes(word),
        at_snapshot,
        "the clone's writes stay private"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_snapshots_are_refused_with_the_file_named() {
    let dir = std::env::temp_dir().join(format!("cp-badsnap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (state_path, mem_path) = paths(&dir);
    // No state file at all.
    let err = load(&dir).err().unwrap();
    assert!(
        err.to_string().contains(&state_path.display().to_string()),
        "{err}"
    );
    // A snapshot with no vCPUs.
    let vm = VmState {
        irqchips: Vec::new(),
        pit: Default::default(),
        clock: Default::default(),
        saved_at_ns: 0,
    };
    let empty = VmSnapshot {
        memory_bytes: RAM,
        vcpus: Vec::new(),
        vm,
        legacy: LegacyState::default(),
        pci_slots: Vec::new(),
    };
    file::write(&state_path, &empty).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, SnapshotError::Invalid { .. }), "{err}");
    // A memory file that does not match the state file's RAM size.
    let mut one = empty.clone();
    one.vcpus.push(fake_vcpu());
    file::write(&state_path, &one).unwrap();
    std::fs::write(&mem_path, [0u8; 4096]).unwrap();
    let err = load(&dir).err().unwrap();
    assert!(matches!(err, SnapshotError::Memory(_)), "{err}");
    assert!(
        err.to_string().contains(&mem_path.display().to_string()),
        "{err}"
    );
    // A wrong memory size in the state file itself.
    one.memory_bytes = 12345;
    file::write(&state_path, &one).unwrap();
    assert!(matches!(
        load(&dir).err().unwrap(),
        SnapshotError::Invalid { .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn fake_vcpu() -> VcpuState {
    VcpuState {
        id: 0,
        cpuid: Vec::new(),
        msrs: Vec::new(),
        regs: Default::default(),
        sregs: Default::default(),
        xsave: vec![0; 1024],
        xcrs: Default::default(),
        debugregs: Default::default(),
        lapic: Default::default(),
        events: Default::default(),
        mp_state: Default::default(),
    }
}
