//! VM generation id (Microsoft's "Virtual Machine Generation ID", as Linux's `vmgenid` driver
//! reads it): 16 random bytes in guest memory that change whenever the guest may have been
//! duplicated. Every restore of a snapshot writes a new id into the clone's own (copy-on-write)
//! memory and raises a GED event that notifies the device, so the guest kernel reseeds its RNG
//! and guest software that polls the id knows it is a new copy.
//!
//! The id lives at [`VMGENID_ADDR`], in the BIOS area below 1 MiB after the ACPI tables: guest
//! memory that the e820 map does not give the kernel as RAM, on a page without RAM (Linux's
//! /dev/mem reads a page that shares anything with RAM below 1 MiB as zeros). The DSDT's `\_SB_.VGEN` device (`_HID "VMGENCTR"`,
//! `_CID "VM_Gen_Counter"`) tells the guest where through `ADDR` (package of low, high dword).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use crate::arch::x86_64::layout::VMGENID_ADDR;
/// Bytes in the id.
pub const VMGENID_LEN: usize = 16;

/// Why a new id could not be written.
#[derive(Debug, thiserror::Error)]
pub enum VmGenIdError {
    /// The kernel's random source failed.
    #[error("reading 16 random bytes for the VM generation id: {0}")]
    Random(std::io::Error),
    /// Guest memory does not cover the id's address.
    #[error("writing the VM generation id to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Writes a fresh random id into guest memory and returns it.
pub fn write_new(mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    // SAFETY: getrandom(2) writes at most `id.len()` bytes into the buffer we own.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n != VMGENID_LEN as isize {
        return Err(VmGenIdError::Random(std::io::Error::last_os_error()));
    }
    mem.write_slice(&id, GuestAddress(VMGENID_ADDR))?;
    Ok(id)
}

/// The id the guest currently sees.
pub fn read(mem: &GuestMemoryMmap) -> Result<[u8; VMGENID_LEN], VmGenIdError> {
    let mut id = [0u8; VMGENID_LEN];
    mem.read_slice(&mut id, GuestAddress(VMGENID_ADDR))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_id_differs_and_lands_where_addr_says() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let a = write_new(&mem).unwrap();
        assert_eq!(read(&mem).unwrap(), a);
        let b = write_new(&mem).unwrap();
        assert_ne!(a, b, "a restore must give the guest a new id");
        assert_eq!(read(&mem).unwrap(), b);
        let tiny = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        assert!(write_new(&tiny).is_err(), "memory without the id's page");
    }
}
