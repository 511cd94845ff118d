//! A shared memory mapping of a device buffer (DRM dumb buffer or fbdev), unmapped on drop.

use std::os::fd::RawFd;

use anyhow::bail;

/// `len` bytes of device memory mapped read-write.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through &mut self.
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` at `offset`.
    pub fn new(fd: RawFd, len: usize, offset: u64) -> anyhow::Result<Self> {
        if len == 0 {
            bail!("refusing to map an empty display buffer");
        }
        // SAFETY: a fresh shared mapping chosen by the kernel; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {len} display bytes at offset {offset:#x} failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len describe a live mapping owned by self, borrowed exclusively.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the region this value mapped; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
