//! Loading the kernel image: bzImage (64-bit boot protocol) or ELF vmlinux.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, GuestAddress};

use crate::arch::x86_64::layout::HIMEM_START;
use crate::memory::GuestMemoryMmap;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const HDR_MAGIC_OFFSET: u64 = 0x202;
const HDR_MAGIC: [u8; 4] = *b"HdrS";
const XLF_KERNEL_64: u16 = 1 << 0;
const STARTUP_64_OFFSET: u64 = 0x200;
/// Boot protocol version that introduced `cmdline_size`.
const PROTOCOL_CMDLINE_SIZE: u16 = 0x206;

/// Why the kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Reading the file failed.
    #[error("cannot read the kernel image: {0}")]
    Io(#[from] std::io::Error),
    /// Neither ELF nor bzImage.
    #[error("the kernel image is neither a bzImage (no \"HdrS\" at 0x202) nor an ELF vmlinux: pass a Linux kernel to --kernel")]
    NotAKernel,
    /// A bzImage without the 64-bit entry point.
    #[error("this bzImage has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64): use an x86_64 kernel")]
    Not64Bit,
    /// linux-loader rejected the image (truncated, corrupt, does not fit in memory).
    #[error(
        "the {format} kernel image is truncated, corrupt or too large for guest memory ({source})"
    )]
    Load {
        /// bzImage or ELF.
        format: &'static str,
        /// The loader's reason.
        source: linux_loader::loader::Error,
    },
}

/// A kernel placed in guest memory.
#[derive(Debug)]
pub struct LoadedKernel {
    /// Where the vCPU starts in 64-bit mode.
    pub entry: GuestAddress,
    /// First byte after the kernel image.
    pub end: GuestAddress,
    /// The bzImage setup header (None for ELF).
    pub setup_header: Option<setup_header>,
    /// Command-line capacity including the NUL, from the header when it says.
    pub cmdline_capacity: usize,
    /// Highest address (inclusive) the initrd may occupy, from the header when it says.
    pub initrd_addr_max: u64,
}

fn read_at<const N: usize>(file: &mut File, offset: u64) -> std::io::Result<Option<[u8; N]>> {
    let mut buf = [0u8; N];
    file.seek(SeekFrom::Start(offset))?;
    match file.read_exact(&mut buf) {
        Ok(()) => Ok(Some(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Load `file` into `mem`.
pub fn load_kernel(mem: &GuestMemoryMmap, file: &mut File) -> Result<LoadedKernel, KernelError> {
    if read_at::<4>(file, 0)? == Some(ELF_MAGIC) {
        file.seek(SeekFrom::Start(0))?;
        let r = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            KernelError::Load {
                format: "ELF",
                source,
            }
        })?;
        return Ok(LoadedKernel {
            entry: r.kernel_load,
            end: GuestAddress(r.kernel_end),
            setup_header: None,
            cmdline_capacity: super::cmdline::DEFAULT_CMDLINE_CAPACITY,
            initrd_addr_max: u64::from(u32::MAX),
        });
    }
    if read_at::<4>(file, HDR_MAGIC_OFFSET)? != Some(HDR_MAGIC) {
        return Err(KernelError::NotAKernel);
    }
    file.seek(SeekFrom::Start(0))?;
    let r = BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        KernelError::Load {
            format: "bzImage",
            source,
        }
    })?;
    let hdr = r.setup_header.ok_or(KernelError::NotAKernel)?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(KernelError::Not64Bit);
    }
    let cmdline_capacity = if hdr.version >= PROTOCOL_CMDLINE_SIZE && hdr.cmdline_size > 0 {
        // cmdline_size excludes the terminating NUL.
        hdr.cmdline_size as usize + 1
    } else {
        256
    };
    Ok(LoadedKernel {
        entry: r.kernel_load.unchecked_add(STARTUP_64_OFFSET),
        end: GuestAddress(r.kernel_end),
        setup_header: Some(hdr),
        cmdline_capacity,
        initrd_addr_max: u64::from(hdr.initrd_addr_max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> File {
        let mut f = crate::boot::memfd_with(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn garbage_and_empty_are_not_kernels() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        for bytes in [&b""[..], b"hello", &[0u8; 4096]] {
            let err = load_kernel(&mem, &mut file_with(bytes)).unwrap_err();
            assert!(matches!(err, KernelError::NotAKernel), "{err}");
        }
    }

    #[test]
    fn truncated_bzimage_rejected() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let mut img = vec![0u8; 0x300];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        let err = load_kernel(&mem, &mut file_with(&img)).unwrap_err();
        assert!(matches!(err, KernelError::Load { .. }), "{err}");
    }

    #[test]
    fn truncated_elf_rejected() {
        let mem = crate::memory::create_guest_memory(64 << 20).unwrap();
        let err = load_kernel(&mem, &mut file_with(b"\x7fELF\x02\x01\x01")).unwrap_err();
        assert!(matches!(err, KernelError::Load { .. }), "{err}");
    }

    #[test]
    fn real_debian_kernel_when_cached() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/kernel/vmlinuz");
        let Ok(mut f) = File::open(&path) else {
            eprintln!("{} missing: skipping", path.display());
            return;
        };
        let mem = crate::memory::create_guest_memory(256 << 20).unwrap();
        let k = load_kernel(&mem, &mut f).unwrap();
        assert_eq!(k.entry, GuestAddress(HIMEM_START + STARTUP_64_OFFSET));
        assert_eq!(k.cmdline_capacity, 2048);
        assert!(k.setup_header.is_some());
    }
}
