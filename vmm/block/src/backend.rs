//! The storage behind a virtio-blk device: a raw file or a qcow2 overlay.

use crate::guest_io::GuestIo;
use crate::qcow2::{Qcow2Disk, Qcow2Error};

/// Why a disk operation failed. The device turns any of these into `VIRTIO_BLK_S_IOERR` for
/// the request; the messages are for the VMM log.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The host file operation failed.
    #[error("disk I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A request reached past the end of the disk.
    #[error("request at byte {offset} + {len} is past the end of the {capacity}-byte disk")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    /// The disk was opened read-only (`--disk ...,ro`).
    #[error("disk is read-only")]
    ReadOnly,
    /// A request buffer could not be accessed in guest memory.
    #[error("{0}")]
    GuestMemory(String),
    /// The image is locked by another user, or cannot be locked.
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
    /// The qcow2 layer failed (corrupt image, allocation cap, ...).
    #[error(transparent)]
    Qcow2(#[from] Qcow2Error),
}

impl DiskError {
    /// The lock conflict this error is, when another process holds the image (or its qcow2
    /// base), so the VMM can tell "disk in use" from a bad disk; otherwise the error back.
    pub fn into_in_use(self) -> Result<crate::lock::ImageInUse, Self> {
        use crate::lock::LockError::InUse;
        match self {
            Self::Locked(InUse(e)) | Self::Qcow2(Qcow2Error::Locked(InUse(e))) => Ok(e),
            other => Err(other),
        }
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}

/// Byte-addressed storage for one virtio-blk device. Offsets and lengths are validated by the
/// device against [`capacity`](Self::capacity) before any call, and again by each backend.
pub trait DiskBackend: Send {
    /// Size in bytes the guest sees.
    fn capacity(&self) -> u64;
    /// Whether writes, discards and write-zeroes are refused.
    fn read_only(&self) -> bool;
    /// Fill `buf` from byte `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError>;
    /// Write `buf` at byte `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError>;
    /// Fill the guest buffers `data` from byte `offset`. The default reads into `bounce` and
    /// copies; a backend that is one plain file reads straight into guest memory.
    fn read_to_guest(
        &mut self,
        data: &GuestIo<'_>,
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), DiskError> {
        bounce.resize(data.len(), 0);
        self.read_at(bounce, offset)?;
        data.copy_from(bounce)
    }
    /// Write the guest buffers `data` at byte `offset` (default: through `bounce`).
    fn write_from_guest(
        &mut self,
        data: &GuestIo<'_>,
        offset: u64,
        bounce: &mut Vec<u8>,
    ) -> Result<(), DiskError> {
        bounce.resize(data.len(), 0);
        data.copy_to(bounce)?;
        self.write_at(bounce, offset)
    }
    /// Make every completed write durable (fsync/fdatasync).
    fn flush(&mut self) -> Result<(), DiskError>;
    /// Make the range read as zeros (space may be deallocated).
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError>;
    /// The guest no longer needs the range: deallocate what can be (contents then unspecified,
    /// but never other data).
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError>;
}

impl DiskBackend for Qcow2Disk {
    fn capacity(&self) -> u64 {
        self.size()
    }
    fn read_only(&self) -> bool {
        !self.writable()
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        Ok(Qcow2Disk::read_at(self, buf, offset)?)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), DiskError> {
        Ok(Qcow2Disk::write_at(self, buf, offset)?)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(Qcow2Disk::flush(self)?)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        Ok(self.zero_range(offset, len, true)?)
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), DiskError> {
        Ok(self.zero_range(offset, len, false)?)
    }
}
