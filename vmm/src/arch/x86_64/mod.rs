//! x86_64 guest setup: memory layout, zero page + e820, GDT, identity page tables, CPUID,
//! MSRs, FPU and LAPIC state, following the Linux 64-bit boot protocol; a reset stub at the
//! reset vector.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod paging;
pub mod regs;
pub mod reset_vector;
