//! Identity-mapped page tables covering the first GiB, enough for the kernel's 64-bit entry
//! (it builds its own tables right away).

use vm_memory::{Bytes, GuestAddress};

use super::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};
use crate::memory::GuestMemoryMmap;

const PRESENT_RW: u64 = 0x3;
const HUGE_2M: u64 = 0x80;

/// Write the PML4 -> PDPT -> PD chain (512 x 2 MiB pages) into guest memory; returns the CR3
/// value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT_ADDR | PRESENT_RW, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | PRESENT_RW, GuestAddress(PDPT_ADDR))?;
    let mut pd = [0u8; 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        let entry = ((i as u64) << 21) | PRESENT_RW | HUGE_2M;
        chunk.copy_from_slice(&entry.to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PD_ADDR))?;
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_map_first_gib_identity() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        assert_eq!(write_identity_tables(&mem).unwrap(), PML4_ADDR);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pdpt: u64 = mem.read_obj(GuestAddress(PDPT_ADDR)).unwrap();
        assert_eq!(pdpt & !0xfff, PD_ADDR);
        let last: u64 = mem.read_obj(GuestAddress(PD_ADDR + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
    }
}
