//! The Linux zero page (`boot_params`) and its e820 memory map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::layout::{EBDA_START, FOUR_GIB, HIMEM_START, SYSTEM_RESERVED_START};
use crate::memory::GuestMemoryMmap;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved (not RAM, not to be reused by the guest).
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// One e820 entry: start, length, type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The guest's memory map: RAM below the EBDA, RAM from 1 MiB to the end of low memory, the
/// system area below 4 GiB (IOAPIC/LAPIC/TSS) reserved, then any RAM above 4 GiB. The BIOS
/// area (EBDA, ACPI tables) and the PCI MMIO window are left out of the RAM entries.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.last_addr().raw_value() + 1;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map.push(E820Entry {
        addr: SYSTEM_RESERVED_START,
        size: FOUR_GIB - SYSTEM_RESERVED_START,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

/// Everything the kernel needs to find in the zero page.
pub struct BootParamsInput {
    /// The bzImage setup header, when the kernel is a bzImage (`None` for ELF).
    pub setup_header: Option<setup_header>,
    /// Address and length (without NUL) of the command line.
    pub cmdline: (GuestAddress, usize),
    /// Address and size of the initrd, if any.
    pub initrd: Option<(GuestAddress, u32)>,
    /// Address of the ACPI RSDP.
    pub rsdp: GuestAddress,
    /// The memory map.
    pub e820: Vec<E820Entry>,
}

/// Why the zero page could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// More e820 entries than the zero page has room for.
    #[error("{0} e820 entries do not fit in the zero page (max 128)")]
    TooManyE820Entries(usize),
}

/// Build the zero page from `input`.
pub fn build_boot_params(input: &BootParamsInput) -> Result<boot_params, BootParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = input.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = input.cmdline.0.raw_value() as u32;
    params.hdr.cmdline_size = input.cmdline.1 as u32;
    if let Some((addr, size)) = input.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size;
    }
    params.acpi_rsdp_addr = input.rsdp.raw_value();
    if input.e820.len() > params.e820_table.len() {
        return Err(BootParamsError::TooManyE820Entries(input.e820.len()));
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&input.e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = input.e820.len() as u8;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, MMIO_HOLE_START};

    fn overlaps(a: &E820Entry, b: &E820Entry) -> bool {
        a.addr < b.addr + b.size && b.addr < a.addr + a.size
    }

    fn check_map(map: &[E820Entry], total_ram: u64) {
        for (i, a) in map.iter().enumerate() {
            for b in &map[i + 1..] {
                assert!(!overlaps(a, b), "{a:?} overlaps {b:?}");
            }
            if a.kind == E820_RAM {
                let end = a.addr + a.size;
                assert!(
                    end <= MMIO_HOLE_START || a.addr >= FOUR_GIB,
                    "RAM {a:?} intrudes into the MMIO hole"
                );
                assert!(
                    end <= EBDA_START || a.addr >= HIMEM_START,
                    "RAM {a:?} covers the BIOS area"
                );
            }
        }
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, total_ram - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn e820_small_guest() {
        let mem = create_guest_memory(128 << 20).unwrap();
        let map = e820_map(&mem);
        check_map(&map, 128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].kind, E820_RESERVED);
    }

    #[test]
    fn e820_large_guest_has_high_ram_and_excludes_hole() {
        // Only address space is reserved; pages are never touched.
        let mem = create_guest_memory(MMIO_HOLE_START + (512 << 20)).unwrap();
        let map = e820_map(&mem);
        check_map(&map, MMIO_HOLE_START + (512 << 20));
        let high = map.last().unwrap();
        assert_eq!(
            (high.addr, high.size, high.kind),
            (FOUR_GIB, 512 << 20, E820_RAM)
        );
    }

    #[test]
    fn boot_params_fields() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let params = build_boot_params(&BootParamsInput {
            setup_header: None,
            cmdline: (GuestAddress(0x20000), 12),
            initrd: Some((GuestAddress(0x300_0000), 0x1000)),
            rsdp: GuestAddress(0xe0000),
            e820: e820_map(&mem),
        })
        .unwrap();
        assert_eq!({ params.hdr.boot_flag }, 0xaa55);
        assert_eq!({ params.hdr.header }, 0x5372_6448);
        assert_eq!({ params.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ params.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1000);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(params.e820_entries, 3);
        assert_eq!({ params.e820_table[1].addr }, HIMEM_START);
    }

    #[test]
    fn too_many_e820_entries_rejected() {
        let e = E820Entry {
            addr: 0,
            size: 1,
            kind: E820_RAM,
        };
        let input = BootParamsInput {
            setup_header: None,
            cmdline: (GuestAddress(0), 0),
            initrd: None,
            rsdp: GuestAddress(0),
            e820: vec![e; 129],
        };
        assert!(build_boot_params(&input).is_err());
    }
}
