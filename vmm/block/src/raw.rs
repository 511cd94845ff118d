//! A raw image file served as-is.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::backend::{DiskBackend, DiskError};
use crate::guest_io::GuestIo;

/// Chunk used when a filesystem cannot zero ranges natively.
const ZERO_CHUNK: usize = 1 << 20;

/// A raw disk image (regular file or block device).
pub struct RawDisk {
    file: File,
    capacity: u64,
    read_only: bool,
}

impl RawDisk {
    /// Open `path`; `read_only` opens it O_RDONLY so the guest cannot change it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(DiskError::io("opening the raw disk image"))?;
        crate::lock::lock_image(&file, path, !read_only)?;
        // Seeking works for block devices too, where metadata().len() is 0.
        let capacity = file
            .seek(SeekFrom::End(0))
            .map_err(DiskError::io("sizing the raw disk image"))?;
        Ok(Self {
            file,
            capacity,
            read_only,
        })
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> Result<(), DiskError> {
        if write && self.read_only {
            return Err(DiskError::ReadOnly);
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(DiskError::OutOfRange {
                offset,
                len,
                capacity: self.capacity,
            }),
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on our own fd; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl DiskBackend for RawDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.check(offset, buf.len() as u64, false)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(DiskError::io("reading the raw disk"))
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        self.check(offset, buf.len() as u64, true)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(DiskError::io("writing the raw disk"))
    }
    fn read_to_guest(
        &mut self,
        data: &GuestIo<'_>,
        offset: u64,
        _bounce: &mut Vec<u8>,
    ) -> Result<(), DiskError> {
        self.check(offset, data.len() as u64, false)?;
        data.read_from(&self.file, offset)
            .map_err(DiskError::io("reading the raw disk"))
    }
    fn write_from_guest(
        &mut self,
        data: &GuestIo<'_>,
        offset: u64,
        _bounce: &mut Vec<u8>,
    ) -> Result<(), DiskError> {
        self.check(offset, data.len() as u64, true)?;
        data.write_to(&self.file, offset)
            .map_err(DiskError::io("writing the raw disk"))
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(DiskError::io("fdatasync of the raw disk"))
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.check(offset, len, true)?;
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        if self
            .fallocate(libc::FALLOC_FL_ZERO_RANGE | keep, offset, len)
            .is_ok()
            || self
                .fallocate(libc::FALLOC_FL_PUNCH_HOLE | keep, offset, len)
                .is_ok()
        {
            return Ok(());
        }
        let zeros = vec![0u8; ZERO_CHUNK.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(DiskError::io("zeroing the raw disk"))?;
            done += n as u64;
        }
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        self.check(offset, len, true)?;
        if let Err(e) = self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            // Discard is advisory: a filesystem without hole punching keeps the data.
            tracing::debug!(error = %e, "raw disk: discard not supported by the host filesystem");
        }
        Ok(())
    }
}
