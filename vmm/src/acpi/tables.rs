//! FADT, MADT, XSDT and RSDP, written into the BIOS area of guest memory.

use acpi_tables::{rsdp::Rsdp, sdt::Sdt, Aml};
use vm_memory::{Bytes, GuestAddress};

use super::dsdt::build_dsdt;
use super::{OEM_ID, RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};
use crate::arch::x86_64::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};
use crate::memory::GuestMemoryMmap;

const FADT_LEN: u32 = 276;
const FADT_FLAG_PWR_BUTTON: u32 = 1 << 4;
const FADT_FLAG_SLP_BUTTON: u32 = 1 << 5;
const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FADT_FLAG_HW_REDUCED: u32 = 1 << 20;
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const GAS_SYSTEM_IO: u8 = 1;

/// Where the tables went; the RSDP address goes into the zero page.
#[derive(Debug, Clone, Copy)]
pub struct AcpiLayout {
    /// Address of the RSDP.
    pub rsdp: GuestAddress,
    /// First byte after the last table.
    pub end: GuestAddress,
}

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables outgrew the BIOS area.
    #[error("ACPI tables need {0} bytes, more than the BIOS area holds")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("writing ACPI tables to guest memory failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// An 8-bit System I/O Generic Address Structure for `port`.
fn gas_io8(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = GAS_SYSTEM_IO;
    g[1] = 8;
    g[3] = 1; // byte access
    g[4..6].copy_from_slice(&port.to_le_bytes());
    g
}

fn build_fadt(dsdt_addr: u64) -> Sdt {
    let mut fadt = Sdt::new(*b"FACP", FADT_LEN, 6, OEM_ID, *b"CPFADT  ", 1);
    fadt.write_u16(109, IAPC_BOOT_ARCH_NO_VGA);
    fadt.write_u32(
        112,
        FADT_FLAG_PWR_BUTTON
            | FADT_FLAG_SLP_BUTTON
            | FADT_FLAG_RESET_REG_SUP
            | FADT_FLAG_HW_REDUCED,
    );
    fadt.write_bytes(116, &gas_io8(RESET_PORT));
    fadt.write_u8(128, RESET_VALUE);
    fadt.write_u8(131, 5); // FADT minor version
    fadt.write_u64(140, dsdt_addr);
    fadt.write_bytes(244, &gas_io8(SLEEP_CONTROL_PORT));
    fadt.write_bytes(256, &gas_io8(SLEEP_STATUS_PORT));
    fadt.write_bytes(268, b"CLDPHONE");
    fadt.update_checksum();
    fadt
}

/// MADT: one enabled local APIC per vCPU (APIC id = index), the IOAPIC at GSI 0, and ISA
/// interrupt overrides for every legacy IRQ: IRQ0 -> GSI2 (PIT), the rest identity. In
/// hardware-reduced mode Linux has no legacy PIC and maps ISA IRQs (the serial port's IRQ 4)
/// to IOAPIC pins only through these entries.
fn build_madt(ncpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, *b"CPMADT  ", 1);
    madt.write_u32(36, LAPIC_ADDR);
    for id in 0..ncpus {
        madt.append_slice(&[0, 8, id, id, 1, 0, 0, 0]);
    }
    let mut ioapic = [1u8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    madt.append_slice(&ioapic);
    for irq in (0u8..16).filter(|&i| i != 2) {
        let gsi = if irq == 0 { 2u32 } else { u32::from(irq) };
        let mut iso = [2u8, 10, 0, irq, 0, 0, 0, 0, 0, 0];
        iso[4..8].copy_from_slice(&gsi.to_le_bytes());
        madt.append_slice(&iso);
    }
    madt.update_checksum();
    madt
}

fn build_xsdt(entries: &[u64]) -> Sdt {
    let mut xsdt = Sdt::new(*b"XSDT", 36, 1, OEM_ID, *b"CPXSDT  ", 1);
    for e in entries {
        xsdt.append_slice(&e.to_le_bytes());
    }
    xsdt.update_checksum();
    xsdt
}

/// Write all tables for `ncpus` vCPUs at [`ACPI_START`]; returns the RSDP address.
pub fn create_acpi_tables(mem: &GuestMemoryMmap, ncpus: u8) -> Result<AcpiLayout, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut next = rsdp_addr + Rsdp::len() as u64;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let at = (next + 7) & !7;
        let end = at + bytes.len() as u64;
        if end > ACPI_END {
            return Err(AcpiError::TooLarge(end - ACPI_START));
        }
        mem.write_slice(bytes, GuestAddress(at))?;
        next = end;
        Ok(at)
    };
    let dsdt = place(build_dsdt().as_slice())?;
    let fadt = place(build_fadt(dsdt).as_slice())?;
    let madt = place(build_madt(ncpus).as_slice())?;
    let xsdt = place(build_xsdt(&[fadt, madt]).as_slice())?;
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))?;
    Ok(AcpiLayout {
        rsdp: GuestAddress(rsdp_addr),
        end: GuestAddress(next),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Read a table at `addr` from guest memory, checking its length and checksum.
    fn read_table(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut t = vec![0u8; len as usize];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        assert_eq!(
            sum(&t),
            0,
            "bad checksum in {}",
            String::from_utf8_lossy(&t[..4])
        );
        t
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    #[test]
    fn tables_parse_back_with_valid_checksums() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let layout = create_acpi_tables(&mem, 3).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, layout.rsdp).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp), 0);
        let xsdt = read_table(&mem, u64_at(&rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let tables: Vec<Vec<u8>> = xsdt[36..]
            .chunks_exact(8)
            .map(|c| read_table(&mem, u64::from_le_bytes(c.try_into().unwrap())))
            .collect();
        assert_eq!(tables.len(), 2);

        let fadt = &tables[0];
        assert_eq!(&fadt[..4], b"FACP");
        assert_ne!(u32_at(fadt, 112) & FADT_FLAG_HW_REDUCED, 0);
        assert_eq!(
            u16::from_le_bytes([fadt[248], fadt[249]]),
            SLEEP_CONTROL_PORT
        );
        assert_eq!(u16::from_le_bytes([fadt[120], fadt[121]]), RESET_PORT);
        let dsdt = read_table(&mem, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");

        let madt = &tables[1];
        assert_eq!(&madt[..4], b"APIC");
        let mut lapics = Vec::new();
        let mut ioapics = 0;
        let mut overrides = Vec::new();
        let mut o = 44;
        while o < madt.len() {
            let (kind, len) = (madt[o], madt[o + 1] as usize);
            assert!(
                len >= 2 && o + len <= madt.len(),
                "malformed MADT entry at {o}"
            );
            match kind {
                0 => lapics.push(madt[o + 3]),
                1 => {
                    ioapics += 1;
                    assert_eq!(u32_at(madt, o + 4), IOAPIC_ADDR);
                }
                2 => overrides.push((madt[o + 3], u32_at(madt, o + 4))),
                _ => {}
            }
            o += len;
        }
        assert_eq!(lapics, vec![0, 1, 2]);
        assert_eq!(ioapics, 1);
        assert_eq!(overrides.len(), 15);
        assert!(overrides.contains(&(0, 2)));
        assert!(overrides.contains(&(4, 4)), "serial IRQ must be mapped");
        assert!(layout.end.0 <= ACPI_END);
    }

    #[test]
    fn sixty_four_cpus_fit() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        create_acpi_tables(&mem, 64).unwrap();
    }
}
