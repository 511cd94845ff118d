//! Fixed guest-physical addresses of the structures the VMM writes before boot.

/// GDT used for the 64-bit entry.
pub const GDT_ADDR: u64 = 0x500;
/// Empty IDT loaded at entry (the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_ADDR: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, PD (first GiB with 2 MiB pages).
pub const PML4_ADDR: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Page directory.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Start of the EBDA / BIOS area, which is not usable RAM.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first, where Linux also scans for it).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI table area: the VM generation id's page follows.
pub const ACPI_END: u64 = VMGENID_ADDR;
/// The VM generation id (16 bytes, see `acpi::vmgenid`): a page of the BIOS area that the
/// e820 map does not give the kernel as RAM and that shares no page with RAM, so the guest can
/// read it through /dev/mem; below the reset vector's page.
pub const VMGENID_ADDR: u64 = 0xf_e000;
/// Physical address of the real-mode reset vector F000:FFF0 (see `reset_vector`).
pub const RESET_VECTOR_ADDR: u64 = 0xf_fff0;
/// Where the kernel's protected-mode part is loaded and high memory starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// IOAPIC, LAPIC, KVM TSS and the reset vector live here; reported as reserved in e820.
pub const SYSTEM_RESERVED_START: u64 = 0xfec0_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// LAPIC MMIO base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// End of the 32-bit address space.
pub const FOUR_GIB: u64 = 1 << 32;
/// First byte of the 32-bit PCI MMIO window for BARs.
pub const PCI_MMIO_START: u64 = crate::memory::MMIO_HOLE_START;
/// Size of the 32-bit PCI MMIO window.
pub const PCI_MMIO_SIZE: u64 = SYSTEM_RESERVED_START - PCI_MMIO_START;
