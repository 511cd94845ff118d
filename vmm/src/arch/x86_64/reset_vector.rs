//! Firmware stand-in at the x86 reset vector (F000:FFF0).
//!
//! We boot Linux directly, so no BIOS sits at the reset vector. Linux still jumps there: with
//! hardware-reduced ACPI and no EFI firmware its reboot code picks `reboot=efi` (the x86
//! `efi_reboot_required()` quirk), the EFI call is a no-op, and it falls through to
//! `reboot=bios`, which drops to real mode and far-jumps to F000:FFF0 expecting firmware to
//! reset the machine. Zeroed memory there is an endless `add [bx+si],al` loop: the guest hangs.
//! This stub does what the firmware would: it pulses the FADT reset register.

use vm_memory::{Bytes, GuestAddress};

use super::layout::RESET_VECTOR_ADDR;
use crate::acpi::{RESET_PORT, RESET_VALUE};
use crate::memory::GuestMemoryMmap;

const STUB_LEN: usize = 9;

/// Real-mode code: write the reset value to the reset port, then halt for good.
#[rustfmt::skip] // one instruction per line
fn reset_stub() -> [u8; STUB_LEN] {
    let [port_lo, port_hi] = RESET_PORT.to_le_bytes();
    [
        0xb0, RESET_VALUE, // mov al, RESET_VALUE
        0xba, port_lo, port_hi, // mov dx, RESET_PORT
        0xee, // out dx, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ]
}

/// Write the reset stub at [`RESET_VECTOR_ADDR`]; the e820 map keeps that area out of the
/// kernel's RAM, so the stub survives until the guest needs it.
pub fn write_reset_vector(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&reset_stub(), GuestAddress(RESET_VECTOR_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{ACPI_END, HIMEM_START};

    #[test]
    fn stub_writes_the_fadt_reset_register_and_fits_below_1mib() {
        let mem = crate::memory::create_guest_memory(2 << 20).unwrap();
        write_reset_vector(&mem).unwrap();
        let mut code = [0u8; STUB_LEN];
        mem.read_slice(&mut code, GuestAddress(RESET_VECTOR_ADDR))
            .unwrap();
        assert_eq!(&code[..2], &[0xb0, RESET_VALUE]);
        assert_eq!(u16::from_le_bytes([code[3], code[4]]), RESET_PORT);
        assert_eq!(code[5], 0xee);
        // The short jump lands on the hlt (offset 6).
        assert_eq!(code[6], 0xf4);
        assert_eq!(STUB_LEN as i64 + i64::from(code[8] as i8), 6);
        const {
            assert!(RESET_VECTOR_ADDR + STUB_LEN as u64 <= HIMEM_START);
            assert!(
                ACPI_END <= RESET_VECTOR_ADDR,
                "ACPI tables would overwrite the stub"
            );
        }
    }
}
