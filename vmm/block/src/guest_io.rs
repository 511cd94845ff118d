//! A request's data buffers in guest memory, checked once. A raw disk moves them with one
//! `preadv`/`pwritev` straight between its file and guest memory; other backends go through
//! a bounce buffer.

use std::os::fd::AsRawFd;

use cloudphone_virtio::GuestMemory;
use vm_memory::GuestMemoryBackend;

use crate::backend::DiskError;
use crate::request::{gather, scatter, RequestError, Segment};

/// The data buffers of one read or write request, all inside guest memory.
pub struct GuestIo<'a> {
    mem: &'a GuestMemory,
    segments: &'a [Segment],
    len: usize,
}

impl<'a> GuestIo<'a> {
    /// Check that every segment lies inside guest memory.
    pub(crate) fn new(mem: &'a GuestMemory, segments: &'a [Segment]) -> Result<Self, RequestError> {
        let mut len = 0usize;
        for s in segments {
            for slice in GuestMemoryBackend::get_slices(mem, s.addr, s.len as usize) {
                slice.map_err(|_| RequestError::Memory(s.addr.0))?;
            }
            len += s.len as usize;
        }
        Ok(GuestIo { mem, segments, len })
    }

    /// Total bytes of the buffers.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffers hold no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copy `data` (exactly [`len`](Self::len) bytes) into the guest buffers.
    pub fn copy_from(&self, data: &[u8]) -> Result<(), DiskError> {
        scatter(self.mem, self.segments, data).map_err(guest_memory)?;
        Ok(())
    }

    /// Copy the guest buffers into `out` (exactly [`len`](Self::len) bytes).
    pub fn copy_to(&self, out: &mut [u8]) -> Result<(), DiskError> {
        gather(self.mem, self.segments, out).map_err(guest_memory)
    }

    /// Fill the guest buffers from `file` at `offset` (reads until full; EOF is an error).
    pub fn read_from(&self, file: &std::fs::File, offset: u64) -> std::io::Result<()> {
        self.transfer(file, offset, |fd, iov, count, at| {
            // SAFETY: the iovecs point into guest memory checked in `new` and valid for
            // writes of their lengths while `self` borrows the mapping.
            unsafe { libc::preadv(fd, iov, count, at) }
        })
    }

    /// Write the guest buffers to `file` at `offset`.
    pub fn write_to(&self, file: &std::fs::File, offset: u64) -> std::io::Result<()> {
        self.transfer(file, offset, |fd, iov, count, at| {
            // SAFETY: as in `read_from`, valid for reads.
            unsafe { libc::pwritev(fd, iov, count, at) }
        })
    }

    /// Run `op` (preadv or pwritev) until every byte moved, resuming after short transfers.
    fn transfer(
        &self,
        file: &std::fs::File,
        offset: u64,
        op: impl Fn(libc::c_int, *const libc::iovec, libc::c_int, libc::off_t) -> isize,
    ) -> std::io::Result<()> {
        let mut iov = Vec::with_capacity(self.segments.len());
        for s in self.segments {
            for slice in GuestMemoryBackend::get_slices(self.mem, s.addr, s.len as usize) {
                let slice = slice.map_err(std::io::Error::other)?;
                iov.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
        }
        let (mut first, mut done) = (0, 0usize);
        while done < self.len {
            // At most IOV_MAX entries per call; the rest follow in the next round.
            let count = (iov.len() - first).min(1024);
            let at = libc::off_t::try_from(offset + done as u64)
                .map_err(|_| std::io::Error::other("disk offset overflows off_t"))?;
            let n = op(
                file.as_raw_fd(),
                iov[first..].as_ptr(),
                count as libc::c_int,
                at,
            );
            let mut n = match usize::try_from(n) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(_) => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            done += n;
            while n > 0 {
                let entry = &mut iov[first];
                if n >= entry.iov_len {
                    n -= entry.iov_len;
                    first += 1;
                } else {
                    // SAFETY: advancing within the same iovec's buffer.
                    entry.iov_base = unsafe { entry.iov_base.cast::<u8>().add(n).cast() };
                    entry.iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }
}

fn guest_memory(e: RequestError) -> DiskError {
    DiskError::GuestMemory(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DiskBackend;
    use crate::raw::RawDisk;
    use crate::testutil::{pattern, TempDir};
    use vm_memory::{Bytes, GuestAddress};

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn raw_disk_moves_scattered_guest_buffers_with_vectored_io() {
        let dir = TempDir::new("guest-io");
        std::fs::write(dir.path("d"), vec![0u8; 64 << 10]).unwrap();
        let mut disk = RawDisk::open(&dir.path("d"), false).unwrap();
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let data = pattern(3, 3 * 1024);
        // Three buffers out of order in guest memory, 1 KiB each.
        let out = [seg(0x8000, 1024), seg(0x1000, 1024), seg(0x20000, 1024)];
        for (i, s) in out.iter().enumerate() {
            mem.write_slice(&data[i * 1024..(i + 1) * 1024], s.addr)
                .unwrap();
        }
        let io = GuestIo::new(&mem, &out).unwrap();
        disk.write_from_guest(&io, 4096, &mut Vec::new()).unwrap();
        assert_eq!(
            &std::fs::read(dir.path("d")).unwrap()[4096..4096 + 3072],
            &data[..]
        );

        let back = [seg(0x40000, 512), seg(0x50000, 2560)];
        let io = GuestIo::new(&mem, &back).unwrap();
        disk.read_to_guest(&io, 4096, &mut Vec::new()).unwrap();
        let mut got = vec![0u8; 3072];
        io.copy_to(&mut got).unwrap();
        assert_eq!(got, data);

        // Past the end of the file: an error, not a short success.
        assert!(io
            .read_from(
                &std::fs::File::open(dir.path("d")).unwrap(),
                (64 << 10) - 1024
            )
            .is_err());
        assert!(matches!(
            disk.read_to_guest(&io, (64 << 10) - 1024, &mut Vec::new()),
            Err(DiskError::OutOfRange { .. })
        ));
    }

    #[test]
    fn buffers_outside_guest_memory_are_refused_up_front() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let segs = [seg(0x1000, 512), seg((1 << 20) - 256, 512)];
        assert_eq!(
            GuestIo::new(&mem, &segs).err(),
            Some(RequestError::Memory((1 << 20) - 256))
        );
    }
}
