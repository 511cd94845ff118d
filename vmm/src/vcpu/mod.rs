//! One thread per vCPU: KVM_RUN in a loop, dispatching port I/O and MMIO exits to the buses and
//! turning shutdown/reset/crash exits into a [`GuestExit`].

pub mod control;
pub mod dump;
pub mod kick;
#[cfg(test)]
mod payload_tests;

use std::sync::{Arc, Mutex, RwLock};

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::exit::{ExitSignal, GuestExit};
use crate::snapshot::{VcpuState, VcpuStateError};
pub use control::{ParkedJob, Request, RunControl};

/// Where parked vCPUs put their state when a snapshot asks for it, and what they need to read
/// it (the MSR list and xsave size come from `/dev/kvm`, which vCPU threads do not hold).
#[derive(Default)]
pub struct SavedVcpus {
    /// MSR indices to save, in restore order.
    pub msr_list: Vec<u32>,
    /// Size of the xsave area in 32-bit words.
    pub xsave_words: usize,
    /// One slot per vCPU id, filled by each vCPU thread.
    pub states: Vec<Option<Result<VcpuState, VcpuStateError>>>,
}

/// State every vCPU thread shares with the VM.
pub struct VcpuContext {
    /// Port I/O devices.
    pub pio: RwLock<Bus>,
    /// MMIO devices (PCI BARs move, hence the lock).
    pub mmio: RwLock<Bus>,
    /// Where the guest's exit reason goes.
    pub exit: Arc<ExitSignal>,
    /// Run/pause/stop requests.
    pub control: RunControl,
    /// Snapshot hand-off from the parked vCPU threads.
    pub saved: Mutex<SavedVcpus>,
}

impl VcpuContext {
    /// A context with empty buses.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self {
            pio: RwLock::new(Bus::new()),
            mmio: RwLock::new(Bus::new()),
            exit,
            control: RunControl::default(),
            saved: Mutex::new(SavedVcpus::default()),
        }
    }
}

/// Why a vCPU's run loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuOutcome {
    /// The controller asked it to stop.
    Stopped,
    /// The vCPU executed HLT with no in-kernel irqchip to wake it (test payloads).
    Halted,
    /// The guest ended (reason recorded in the context's exit signal).
    GuestExited,
}

/// A created and configured vCPU.
pub struct Vcpu {
    /// Index (= APIC id).
    pub id: u8,
    /// The KVM handle.
    pub fd: VcpuFd,
    /// Shared state.
    pub ctx: Arc<VcpuContext>,
}

enum Step {
    Continue,
    Halt,
    Exit(GuestExit),
    /// The guest crashed; registers are dumped once the exit data is no longer borrowed.
    Crash(String),
}

fn read_lock(b: &RwLock<Bus>) -> std::sync::RwLockReadGuard<'_, Bus> {
    b.read().unwrap_or_else(|p| p.into_inner())
}

fn handle(id: u8, ctx: &VcpuContext, exit: VcpuExit<'_>) -> Step {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !read_lock(&ctx.pio).read(u64::from(port), data) {
                cloudphone_virtio::guest_log!(trace, port, len = data.len(), "unclaimed port read");
            }
        }
        VcpuExit::IoOut(port, data) => {
            tracing::trace!(port = format_args!("{port:#x}"), ?data, "port write");
            if !read_lock(&ctx.pio).write(u64::from(port), data) {
                cloudphone_virtio::guest_log!(
                    trace,
                    port,
                    len = data.len(),
                    "unclaimed port write"
                );
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !read_lock(&ctx.mmio).read(addr, data) {
                cloudphone_virtio::guest_log!(
                    debug,
                    addr = format_args!("{addr:#x}"),
                    "unclaimed MMIO read"
                );
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            tracing::trace!(addr = format_args!("{addr:#x}"), ?data, "MMIO write");
            if !read_lock(&ctx.mmio).write(addr, data) {
                cloudphone_virtio::guest_log!(
                    debug,
                    addr = format_args!("{addr:#x}"),
                    "unclaimed MMIO write"
                );
            }
        }
        VcpuExit::Hlt => return Step::Halt,
        VcpuExit::Shutdown => return Step::Crash("triple fault (KVM_EXIT_SHUTDOWN)".into()),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => {
            return Step::Exit(GuestExit::PowerOff)
        }
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => return Step::Exit(GuestExit::Reboot),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, _) => {
            return Step::Crash("guest crash system event".into())
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Step::Crash(format!(
                "KVM entry failed: hardware reason {reason:#x} on host cpu {cpu}"
            ))
        }
        VcpuExit::InternalError => return Step::Crash("KVM internal error".into()),
        other => tracing::debug!(vcpu = id, exit = ?other, "unhandled vCPU exit ignored"),
    }
    Step::Continue
}

impl Vcpu {
    /// Work a parked vCPU does on its own thread: tell KVM the guest was paused (so its
    /// soft-lockup watchdog does not fire on resume), or save its state for a snapshot.
    fn parked_job(&self, job: ParkedJob) {
        match job {
            ParkedJob::Parked => {
                // EINVAL when the guest has not enabled kvmclock: nothing to tell then.
                let _ = self.fd.kvmclock_ctrl();
            }
            ParkedJob::Save => {
                let mut saved = self.ctx.saved.lock().unwrap_or_else(|p| p.into_inner());
                let state = VcpuState::save(&self.fd, self.id, &saved.msr_list, saved.xsave_words);
                let id = usize::from(self.id);
                if saved.states.len() <= id {
                    saved.states.resize_with(id + 1, || None);
                }
                saved.states[id] = Some(state);
            }
        }
    }

    /// Run until stopped, halted, or the guest exits. Installs the kick binding for the
    /// calling thread.
    pub fn run_loop(mut self) -> VcpuOutcome {
        let _kick = kick::KickBinding::bind(&mut self.fd);
        loop {
            if !self.ctx.control.may_run_with(|job| self.parked_job(job)) {
                return VcpuOutcome::Stopped;
            }
            let step = match self.fd.run() {
                Ok(exit) => {
                    let (id, ctx) = (self.id, &self.ctx);
                    // A device model that panics on this thread must stop the VM, not leave
                    // a dead vCPU and a VMM waiting forever. The panic hook already printed
                    // the message and location.
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle(id, ctx, exit)))
                        .unwrap_or(Step::Exit(GuestExit::DevicePanic))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    Step::Continue
                }
                Err(e) => {
                    tracing::error!(vcpu = self.id, error = %e, "KVM_RUN failed");
                    dump::log_vcpu_state(self.id, &self.fd, "KVM_RUN failed");
                    Step::Exit(GuestExit::VmmError)
                }
            };
            match step {
                Step::Continue => {}
                Step::Halt => return VcpuOutcome::Halted,
                Step::Crash(why) => {
                    dump::log_vcpu_state(self.id, &self.fd, &why);
                    self.ctx.exit.request(GuestExit::Crash);
                    return VcpuOutcome::GuestExited;
                }
                Step::Exit(reason) => {
                    self.ctx.exit.request(reason);
                    return VcpuOutcome::GuestExited;
                }
            }
        }
    }
}
