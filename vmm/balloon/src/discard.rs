//! Giving guest pages back to the host: after this the host RSS (and a memfd's allocation)
//! really drops; the guest sees zeros if it touches the pages again.

use std::os::fd::AsRawFd;

use cloudphone_virtio::GuestMemory;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

/// Guest page size the balloon protocol counts in (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const PAGE_SIZE: u64 = 4096;

/// Why a range could not be discarded.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscardError {
    /// The range is not inside one guest memory region.
    #[error("guest range {addr:#x}+{len:#x} is outside guest memory")]
    OutsideMemory { addr: u64, len: u64 },
    /// The range is not page aligned.
    #[error("guest range {addr:#x}+{len:#x} is not 4 KiB aligned")]
    Unaligned { addr: u64, len: u64 },
    /// madvise / fallocate failed.
    #[error("releasing guest range {addr:#x}+{len:#x} failed: {reason}")]
    Host { addr: u64, len: u64, reason: String },
}

/// Release the guest pages `addr..addr+len`: punch a hole in the backing file when guest
/// memory is a shared file mapping (memfd), and `MADV_DONTNEED` the host mapping.
pub fn discard(mem: &GuestMemory, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
    let (a, l) = (addr.raw_value(), len);
    if a % PAGE_SIZE != 0 || l % PAGE_SIZE != 0 {
        return Err(DiscardError::Unaligned { addr: a, len: l });
    }
    if len == 0 {
        return Ok(());
    }
    let outside = DiscardError::OutsideMemory { addr: a, len: l };
    let region = mem.find_region(addr).ok_or(outside.clone())?;
    let offset = addr.raw_value() - region.start_addr().raw_value();
    match offset.checked_add(len) {
        Some(end) if end <= region.len() => {}
        _ => return Err(outside),
    }
    let host_err = |reason: String| DiscardError::Host {
        addr: a,
        len: l,
        reason,
    };
    let host = region
        .get_host_address(MemoryRegionAddress(offset))
        .map_err(|e| host_err(e.to_string()))?;
    if let Some(file) = region.file_offset() {
        if region.flags() & libc::MAP_SHARED != 0 {
            let at = file.start() + offset;
            // SAFETY: fallocate on the region's own fd; no memory is passed.
            let rc = unsafe {
                libc::fallocate(
                    file.file().as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(host_err(format!(
                    "fallocate(PUNCH_HOLE): {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
    }
    // SAFETY: `host..host+len` lies inside this region's mapping (checked above) and the guest
    // gave these pages up; dropping them only makes later accesses read zeros (anonymous or
    // punched file) or the file's contents (private file mapping).
    let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(host_err(format!(
            "madvise(DONTNEED): {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Merge sorted-or-not page frame numbers into runs of contiguous pages: (first pfn, count).
pub fn pfn_runs(pfns: &[u32]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<u64> = pfns.iter().map(|&p| u64::from(p)).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for pfn in sorted {
        match runs.last_mut() {
            Some((start, count)) if *start + *count == pfn => *count += 1,
            _ => runs.push((pfn, 1)),
        }
    }
    runs
}
