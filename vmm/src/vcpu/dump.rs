//! Logging a vCPU's architectural state when the guest crashes.

use kvm_ioctls::VcpuFd;

/// Log general and special registers of `vcpu` at error level.
pub fn log_vcpu_state(id: u8, vcpu: &VcpuFd, why: &str) {
    match vcpu.get_regs() {
        Ok(r) => tracing::error!(
            vcpu = id,
            why,
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x} r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp,
            r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
        ),
        Err(e) => tracing::error!(vcpu = id, why, error = %e, "cannot read registers"),
    }
    if let Ok(s) = vcpu.get_sregs() {
        tracing::error!(
            vcpu = id,
            "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}/{:#x} ss={:#x} gdt={:#x}/{:#x} idt={:#x}/{:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base, s.ss.selector,
            s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
        );
    }
}
