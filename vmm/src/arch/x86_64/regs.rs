//! Initial vCPU register state for the Linux 64-bit boot protocol and real-mode test payloads.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{kvm_segment_from_gdt, BOOT_GDT, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{BOOT_STACK_ADDR, GDT_ADDR, IDT_ADDR, ZERO_PAGE_ADDR};
use crate::memory::GuestMemoryMmap;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Why a vCPU register could not be set.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A vCPU ioctl failed.
    #[error("vCPU {what} failed: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// Writing the GDT/IDT into guest memory failed.
    #[error("writing the boot GDT into guest memory failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Ioctl { what, source }
}

/// Write the boot GDT and an empty IDT into guest memory.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    Ok(())
}

/// Put `vcpu` in 64-bit long mode with the boot GDT and the identity tables at `cr3`.
pub fn setup_long_mode_sregs(vcpu: &VcpuFd, cr3: u64) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(ioctl("GET_SREGS"))?;
    let code = kvm_segment_from_gdt(BOOT_GDT[CODE_INDEX as usize], CODE_INDEX);
    let data = kvm_segment_from_gdt(BOOT_GDT[DATA_INDEX as usize], DATA_INDEX);
    let tss = kvm_segment_from_gdt(BOOT_GDT[TSS_INDEX as usize], TSS_INDEX);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 = X86_CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(ioctl("SET_SREGS"))
}

/// General registers for the 64-bit kernel entry at `entry`: RSI points at the zero page.
pub fn setup_boot_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_ADDR,
        rbp: BOOT_STACK_ADDR,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("SET_REGS"))
}

/// Default x87/SSE control words, as after FNINIT/reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(ioctl("SET_FPU"))
}

/// Boot MSRs: syscall MSRs cleared, TSC at 0, MTRRs enabled with write-back default.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let values = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ];
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).expect("fewer MSRs than the FAM limit");
    let set = vcpu.set_msrs(&msrs).map_err(ioctl("SET_MSRS"))?;
    if set != entries.len() {
        tracing::warn!(
            set,
            wanted = entries.len(),
            failed_msr = format_args!("{:#x}", entries[set].index),
            "KVM accepted only some boot MSRs"
        );
    }
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (b, r) in raw.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

/// LAPIC local interrupts as a PC wires them: LINT0 = ExtINT (the PIC), LINT1 = NMI.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(ioctl("GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(ioctl("SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_mode_bits_replaced_only() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x20u8 as std::os::raw::c_char; // vector
        regs[APIC_LVT0 + 1] = 0x17; // mask bit 16? no: bits 8..15 (mode 7 + bit 12)
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0x20);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x14);
    }
}
