//! Guest RAM: `vm-memory` regions around the 32-bit MMIO hole, plus registration with KVM.
//! By default private anonymous memory with transparent huge pages (2 MiB host pages: fewer
//! host page faults when devices fill guest buffers, and 2 MiB nested page-table entries for
//! KVM); optionally one shared memfd, for handing guest RAM to another process.

use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// Guest memory as used throughout the VMM and by the devices.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO hole (PCI BARs, IOAPIC, LAPIC): RAM never lives in
/// `[MMIO_HOLE_START, 4 GiB)`.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above 4 GiB, where RAM continues when the guest has more than
/// [`MMIO_HOLE_START`] bytes.
pub const HIGH_RAM_START: u64 = 1 << 32;
/// Smallest guest we accept (a Linux kernel + initramfs needs this much to be useful).
pub const MIN_MEMORY_MIB: u64 = 64;

/// Why guest memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Requested size out of range.
    #[error("--memory {mib} MiB is out of range: use {min}..={max} MiB (the maximum is this host's RAM)")]
    Size {
        /// What was asked for.
        mib: u64,
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
    /// The memfd could not be created or sized.
    #[error("cannot create the guest memory file ({what}): {source}")]
    Memfd {
        /// Which step failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Mapping failed.
    #[error("cannot map guest memory: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
    /// KVM refused the memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} failed: {source}")]
    Register {
        /// The slot number.
        slot: u32,
        /// The ioctl error.
        source: kvm_ioctls::Error,
    },
}

/// The RAM ranges (guest address, length) for a guest of `size` bytes: low RAM up to the MMIO
/// hole, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(HIGH_RAM_START), size - MMIO_HOLE_START),
        ]
    }
}

/// Total RAM of this host in MiB (the cap for `--memory`).
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX >> 20;
    }
    (pages as u64).saturating_mul(page_size as u64) >> 20
}

/// Check `mib` against [`MIN_MEMORY_MIB`] and the host's RAM.
pub fn validate_size(mib: u64) -> Result<u64, MemoryError> {
    let max = host_memory_mib();
    if !(MIN_MEMORY_MIB..=max).contains(&mib) {
        return Err(MemoryError::Size {
            mib,
            min: MIN_MEMORY_MIB,
            max,
        });
    }
    Ok(mib << 20)
}

fn memfd(size: u64) -> Result<File, MemoryError> {
    // SAFETY: the name is a valid NUL-terminated string; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(c"cloudphone-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd {
            what: "memfd_create",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a freshly created descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|source| MemoryError::Memfd {
        what: "ftruncate",
        source,
    })?;
    Ok(file)
}

/// How guest RAM is backed on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemoryBacking {
    /// Private anonymous memory advised for transparent huge pages (the default).
    #[default]
    Anonymous,
    /// One memfd mapped shared (`--shared-memory`): another process can map the same RAM.
    SharedMemfd,
}

/// Create `size` bytes of guest RAM backed as `backing`, laid out by [`ram_ranges`]. Pages
/// are only allocated when touched.
pub fn create_guest_memory_with(
    size: u64,
    backing: MemoryBacking,
) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges = ram_ranges(size);
    let mem = match backing {
        MemoryBacking::Anonymous => {
            let mem = GuestMemoryMmap::from_ranges(
                &ranges
                    .iter()
                    .map(|&(start, len)| (start, len as usize))
                    .collect::<Vec<_>>(),
            )?;
            for region in mem.iter() {
                advise_huge_pages(region);
            }
            mem
        }
        MemoryBacking::SharedMemfd => {
            let file = std::sync::Arc::new(memfd(size)?);
            let mut offset = 0u64;
            let mut regions = Vec::new();
            for (start, len) in ranges {
                regions.push((
                    start,
                    len as usize,
                    Some(FileOffset::from_arc(file.clone(), offset)),
                ));
                offset += len;
            }
            GuestMemoryMmap::from_ranges_with_files(regions)?
        }
    };
    Ok(mem)
}

/// [`create_guest_memory_with`] the default backing.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create_guest_memory_with(size, MemoryBacking::default())
}

/// Ask for transparent huge pages on `region`. Only a hint: a host with THP disabled keeps
/// 4 KiB pages, so a refusal is logged, not fatal.
fn advise_huge_pages(region: &vm_memory::GuestRegionMmap<()>) {
    if let Err(e) = advise(region, libc::MADV_HUGEPAGE) {
        tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) refused: guest RAM stays on 4 KiB pages");
    }
}

/// Offers all of guest RAM to KSM (`--mergeable`): the host's `ksmd` then merges pages that
/// are identical across phones (same kernel, same apps) into one copy-on-write page. Private
/// mappings only (anonymous RAM, or a snapshot's memory file mapped `MAP_PRIVATE`). Costs
/// ksmd CPU time and splits the huge pages it merges; does nothing until an operator turns
/// KSM on (`/sys/kernel/mm/ksm/run`). A kernel without KSM refuses; that is logged, the phone
/// runs unmerged.
pub fn advise_mergeable(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        if let Err(e) = advise(region, libc::MADV_MERGEABLE) {
            tracing::warn!(error = %e, "madvise(MADV_MERGEABLE) refused (no KSM in this kernel?): guest RAM is not merged");
            return;
        }
    }
}

/// `madvise(advice)` over the whole of `region`.
fn advise(region: &vm_memory::GuestRegionMmap<()>, advice: libc::c_int) -> std::io::Result<()> {
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .expect("offset 0 is inside every region");
    // SAFETY: `host..host+len` is exactly this region's live mapping; the advice values used
    // here change only how the kernel backs the pages, never their contents.
    let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Register every region of `mem` with KVM, one slot each.
pub fn register_with_kvm(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .expect("offset 0 is inside every region") as u64;
        let desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the mapping stays alive as long as `mem`, which the VM keeps until the VM
        // file descriptor is closed.
        unsafe { vm.set_user_memory_region(desc) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// End of low RAM (below the MMIO hole): where the initrd and boot structures must fit.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> GuestAddress {
    mem.iter()
        .next()
        .map(|r| r.last_addr().unchecked_add(1))
        .unwrap_or(GuestAddress(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_low_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(
            ram_ranges(MMIO_HOLE_START),
            vec![(GuestAddress(0), MMIO_HOLE_START)]
        );
    }

    #[test]
    fn large_guest_skips_the_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1].0, GuestAddress(HIGH_RAM_START));
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }

    #[test]
    fn size_limits() {
        assert!(validate_size(0).is_err());
        assert!(validate_size(63).is_err());
        assert!(validate_size(u64::MAX >> 20).is_err());
        assert_eq!(validate_size(64).unwrap(), 64 << 20);
    }

    #[test]
    fn both_backings_are_readable_writable_and_bounded() {
        use vm_memory::Bytes;
        for backing in [MemoryBacking::Anonymous, MemoryBacking::SharedMemfd] {
            let mem = create_guest_memory_with(64 << 20, backing).unwrap();
            mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
            assert_eq!(
                mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
                0xdead_beef,
                "{backing:?}"
            );
            assert!(mem.write_obj(1u8, GuestAddress(64 << 20)).is_err());
            assert_eq!(low_ram_end(&mem), GuestAddress(64 << 20));
            let shared = mem.iter().all(|r| r.file_offset().is_some());
            assert_eq!(shared, backing == MemoryBacking::SharedMemfd, "{backing:?}");
        }
    }

    /// The `VmFlags` smaps lists for the mapping that holds `mem`'s first region.
    fn vm_flags(mem: &GuestMemoryMmap) -> Vec<String> {
        let start = mem
            .iter()
            .next()
            .unwrap()
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap() as u64;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_region = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((lo, hi)) = range.split_once('-') {
                    if let (Ok(lo), Ok(hi)) =
                        (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
                    {
                        in_region = (lo..hi).contains(&start);
                        continue;
                    }
                }
            }
            if let (true, Some(f)) = (in_region, line.strip_prefix("VmFlags:")) {
                return f.split_whitespace().map(str::to_owned).collect();
            }
        }
        panic!("the guest RAM mapping is not in smaps")
    }

    /// Anonymous guest RAM is advised for huge pages: the kernel lists the mapping with the
    /// `hg` flag in smaps (when this kernel has THP at all).
    #[test]
    fn anonymous_memory_is_advised_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists() {
            return;
        }
        let mem = create_guest_memory_with(64 << 20, MemoryBacking::Anonymous).unwrap();
        let flags = vm_flags(&mem);
        assert!(flags.iter().any(|f| f == "hg"), "{flags:?}");
    }

    /// `--mergeable` RAM carries smaps' `mg` flag (KSM may merge it); RAM without it does
    /// not. (KSM ignores shared mappings: the options refuse `--shared-memory` with it.)
    #[test]
    fn mergeable_memory_is_offered_to_ksm() {
        if !std::path::Path::new("/sys/kernel/mm/ksm").exists() {
            return;
        }
        let mem = create_guest_memory_with(64 << 20, MemoryBacking::Anonymous).unwrap();
        assert!(!vm_flags(&mem).iter().any(|f| f == "mg"));
        advise_mergeable(&mem);
        let flags = vm_flags(&mem);
        assert!(flags.iter().any(|f| f == "mg"), "{flags:?}");
    }
}
