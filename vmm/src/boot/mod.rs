//! Everything written into guest memory before the first instruction: kernel, initrd,
//! command line, ACPI tables, zero page, GDT and page tables.

pub mod cmdline;
pub mod kernel;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use vm_memory::{Address, Bytes, GuestAddress};

use crate::acpi::create_acpi_tables;
use crate::arch::x86_64::boot_params::{build_boot_params, e820_map, BootParamsInput};
use crate::arch::x86_64::layout::{CMDLINE_ADDR, ZERO_PAGE_ADDR};
use crate::arch::x86_64::paging::write_identity_tables;
use crate::arch::x86_64::regs::write_gdt;
use crate::arch::x86_64::reset_vector::write_reset_vector;
use crate::memory::{low_ram_end, GuestMemoryMmap};
pub use kernel::{load_kernel, LoadedKernel};

/// What the boot vCPU needs after memory is prepared.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// CR3 for the identity page tables.
    pub cr3: u64,
}

/// Why the guest could not be prepared for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// An input file could not be opened.
    #[error("cannot open {what} {path}")]
    Open {
        /// Which option named it.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Android boot images could not be assembled.
    #[error("cannot boot the Android images: {0}")]
    Android(String),
    /// The `--restore` snapshot is unusable (the message names the file and the reason).
    #[error("cannot restore: {0}")]
    Snapshot(String),
    /// Kernel loading failed.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The command line was refused.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// The initrd does not fit.
    #[error("the initrd is {size} bytes but only {room} bytes of low guest memory are free above the kernel: use a smaller initrd or a larger --memory")]
    InitrdTooLarge {
        /// Initrd size.
        size: u64,
        /// Room available.
        room: u64,
    },
    /// Reading the initrd failed.
    #[error("cannot read the initrd: {0}")]
    InitrdIo(#[source] std::io::Error),
    /// ACPI tables could not be written.
    #[error(transparent)]
    Acpi(#[from] crate::acpi::tables::AcpiError),
    /// The zero page could not be built.
    #[error(transparent)]
    BootParams(#[from] crate::arch::x86_64::boot_params::BootParamsError),
    /// A guest-memory write failed.
    #[error("writing boot structures into guest memory failed: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// GDT setup failed.
    #[error(transparent)]
    Regs(#[from] crate::arch::x86_64::regs::RegsError),
}

/// An anonymous in-memory file holding `bytes` (kernels and ramdisks that come from an Android
/// boot image are loaded through the same file-based path as `--kernel`/`--initrd`).
pub fn memfd_with(bytes: &[u8]) -> std::io::Result<File> {
    // SAFETY: valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"cloudphone-image".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: we own the new descriptor.
    let mut f = unsafe { File::from_raw_fd(fd) };
    f.write_all(bytes)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// Place the initrd page-aligned at the top of low RAM (below `initrd_addr_max`), above the
/// kernel. Returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    file: &mut File,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u32), BootError> {
    let size = file.seek(SeekFrom::End(0)).map_err(BootError::InitrdIo)?;
    file.seek(SeekFrom::Start(0)).map_err(BootError::InitrdIo)?;
    let top = low_ram_end(mem)
        .raw_value()
        .min(kernel.initrd_addr_max.saturating_add(1));
    let bottom = (kernel.end.raw_value() + 0xfff) & !0xfff;
    let room = top.saturating_sub(bottom);
    if size > room || size > u64::from(u32::MAX) {
        return Err(BootError::InitrdTooLarge { size, room });
    }
    let addr = GuestAddress((top - size) & !0xfff);
    mem.read_exact_volatile_from(addr, file, size as usize)
        .map_err(|e| BootError::InitrdIo(std::io::Error::other(e.to_string())))?;
    Ok((addr, size as u32))
}

/// Load the kernel, initrd and command line and write the boot structures for `ncpus` vCPUs.
pub fn prepare_guest(
    mem: &GuestMemoryMmap,
    kernel_file: &mut File,
    initrd_file: Option<&mut File>,
    cmdline_text: &str,
    ncpus: u8,
) -> Result<BootInfo, BootError> {
    let kernel = load_kernel(mem, kernel_file)?;
    let cmdline_bytes = cmdline::prepare(cmdline_text, kernel.cmdline_capacity)?;
    mem.write_slice(&cmdline_bytes, GuestAddress(CMDLINE_ADDR))?;
    let initrd = initrd_file
        .map(|f| load_initrd(mem, f, &kernel))
        .transpose()?;
    let acpi = create_acpi_tables(mem, ncpus)?;
    write_reset_vector(mem)?;
    let params = build_boot_params(&BootParamsInput {
        setup_header: kernel.setup_header,
        cmdline: (GuestAddress(CMDLINE_ADDR), cmdline_bytes.len() - 1),
        initrd,
        rsdp: acpi.rsdp,
        e820: e820_map(mem),
    })?;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    write_gdt(mem)?;
    let cr3 = write_identity_tables(mem)?;
    Ok(BootInfo {
        entry: kernel.entry,
        cr3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_larger_than_memory_rejected() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100200),
            end: GuestAddress(0x200000),
            setup_header: None,
            cmdline_capacity: 2048,
            initrd_addr_max: u64::from(u32::MAX),
        };
        let mut big = memfd_with(&[]).unwrap();
        big.set_len(64 << 20).unwrap();
        let err = load_initrd(&mem, &mut big, &kernel).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");

        let mut small = memfd_with(b"initrd-bytes").unwrap();
        let (addr, size) = load_initrd(&mem, &mut small, &kernel).unwrap();
        assert_eq!(size, 12);
        assert_eq!(addr.raw_value() & 0xfff, 0);
        assert!(addr.raw_value() + 12 <= 64 << 20);
        let mut back = [0u8; 12];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(&back, b"initrd-bytes");
    }
}
