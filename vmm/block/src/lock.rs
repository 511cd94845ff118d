//! Image locks: a writable image is locked exclusively, a read-only one (a base, a backing
//! file) shared, with open-file-description locks (`F_OFD_SETLK`, the kind QEMU uses). Two
//! VMMs can then never write the same overlay, nor write a base other phones read, and a
//! stale lock cannot outlive its process.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Another open file description holds a conflicting lock on the image.
#[derive(Debug, thiserror::Error)]
#[error("disk image {} is in use by another process ({}): give each phone its own overlay, or stop the VMM that has it", path.display(), if *writable { "it cannot be opened for writing while anyone has it open" } else { "someone has it open for writing" })]
pub struct ImageInUse {
    /// The image.
    pub path: PathBuf,
    /// Whether we wanted to write it.
    pub writable: bool,
}

/// Why an image could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock is held elsewhere.
    #[error(transparent)]
    InUse(#[from] ImageInUse),
    /// The filesystem refused the lock call itself.
    #[error("locking disk image {}: {source}", path.display())]
    Io {
        /// The image.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Lock `file` (opened from `path`): exclusive when `writable`, shared otherwise. The lock is
/// released when the last descriptor of this open file is closed.
pub fn lock_image(file: &File, path: &Path, writable: bool) -> Result<(), LockError> {
    let lock = libc::flock {
        l_type: if writable {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // SAFETY: fcntl on our own open descriptor with a fully initialised flock struct.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(ImageInUse {
            path: path.to_path_buf(),
            writable,
        }
        .into()),
        _ => Err(LockError::Io {
            path: path.to_path_buf(),
            source: err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &Path, write: bool) -> File {
        OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .unwrap()
    }

    #[test]
    fn writers_exclude_everyone_and_readers_share() {
        let dir = std::env::temp_dir().join(format!("cp-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        std::fs::write(&path, [0u8; 512]).unwrap();

        let writer = open(&path, true);
        lock_image(&writer, &path, true).unwrap();
        let err = lock_image(&open(&path, true), &path, true).unwrap_err();
        assert!(matches!(err, LockError::InUse(_)), "{err}");
        assert!(err.to_string().contains("disk.img"), "{err}");
        assert!(lock_image(&open(&path, false), &path, false).is_err());
        drop(writer);

        let (a, b) = (open(&path, false), open(&path, false));
        lock_image(&a, &path, false).unwrap();
        lock_image(&b, &path, false).unwrap();
        assert!(lock_image(&open(&path, true), &path, true).is_err());
        drop((a, b));
        lock_image(&open(&path, true), &path, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
