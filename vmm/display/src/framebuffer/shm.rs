//! A shared-memory file (tmpfs, normally `/dev/shm`) mapped read-write by the VMM; consumers
//! open the same path read-only and `mmap` it, so frames reach them without copies.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{FileOffset, MmapRegion, VolatileMemory, VolatileSlice};

/// Distinguishes several exports in one process.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);
/// Attempts at finding an unused file name (a stale file from a crashed VMM may hold one).
const NAME_ATTEMPTS: u32 = 16;

/// A named, mapped shared-memory file, unlinked when dropped.
pub(crate) struct SharedMemory {
    path: PathBuf,
    file: File,
    map: MmapRegion<()>,
}

impl SharedMemory {
    /// Create a new zero-filled file of `size` bytes in `dir` and map it.
    pub(crate) fn create(dir: &Path, size: usize) -> io::Result<Self> {
        let (path, file) = Self::create_file(dir)?;
        let mapped = file.set_len(size as u64).and_then(|()| {
            MmapRegion::from_file(FileOffset::new(file.try_clone()?, 0), size)
                .map_err(|e| io::Error::other(format!("mmap failed: {e}")))
        });
        match mapped {
            Ok(map) => Ok(Self { path, file, map }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(io::Error::new(
                    e.kind(),
                    format!("sizing/mapping {}: {e}", path.display()),
                ))
            }
        }
    }

    fn create_file(dir: &Path) -> io::Result<(PathBuf, File)> {
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("cloudphone-fb-{}-{id}", std::process::id()));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                        "creating framebuffer file {}: {e} (is the directory a writable tmpfs?)",
                        path.display()
                    ),
                    ))
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free framebuffer file name")))
    }

    /// Path consumers open read-only.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The backing file (for passing the fd to another process).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Mapped size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.map.size()
    }

    /// `count` bytes at `offset`, or `None` past the end.
    pub(crate) fn slice(&self, offset: usize, count: usize) -> Option<VolatileSlice<'_>> {
        self.map.get_slice(offset, count).ok()
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove framebuffer file");
        }
    }
}
