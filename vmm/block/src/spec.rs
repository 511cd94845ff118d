//! `--disk path[,ro][,overlay=path][,id=NAME]`: the CLI syntax for one disk.

use std::path::PathBuf;
use std::str::FromStr;

use crate::backend::{DiskBackend, DiskError};
use crate::qcow2::{create_overlay, Qcow2Disk};
use crate::raw::RawDisk;

/// Longest device ID virtio-blk can report (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_ID_LEN: usize = 20;

/// One `--disk` argument, parsed. `path` is a raw image (or an existing qcow2 image); with
/// `overlay`, `path` is the read-only base and every write goes to the qcow2 overlay (created
/// on first use with the base's size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file (the base when `overlay` is set).
    pub path: PathBuf,
    /// The guest sees a read-only disk (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// Per-phone qcow2 overlay over `path`.
    pub overlay: Option<PathBuf>,
    /// Device ID returned to `VIRTIO_BLK_T_GET_ID` (≤ 20 printable ASCII characters).
    pub id: Option<String>,
}

/// Why a `--disk` argument was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// The argument starts with a comma or is empty.
    #[error("--disk needs an image path first: path[,ro][,overlay=path][,id=NAME]")]
    MissingPath,
    /// An option that is not `ro`, `overlay=` or `id=`.
    #[error("--disk: unknown option {0:?} (expected ro, overlay=PATH or id=NAME)")]
    UnknownOption(String),
    /// The same option given twice.
    #[error("--disk: option {0:?} given twice")]
    Duplicate(&'static str),
    /// `overlay=` with an empty path.
    #[error("--disk: overlay= needs a path")]
    EmptyOverlay,
    /// The device ID is empty, too long or not printable ASCII.
    #[error("--disk: id={0:?} must be 1..=20 printable ASCII characters")]
    BadId(String),
}

impl FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(DiskSpecError::MissingPath)?;
        let mut spec = DiskSpec {
            path: PathBuf::from(path),
            read_only: false,
            overlay: None,
            id: None,
        };
        for part in parts {
            if part == "ro" {
                if spec.read_only {
                    return Err(DiskSpecError::Duplicate("ro"));
                }
                spec.read_only = true;
            } else if let Some(p) = part.strip_prefix("overlay=") {
                if p.is_empty() {
                    return Err(DiskSpecError::EmptyOverlay);
                }
                if spec.overlay.replace(PathBuf::from(p)).is_some() {
                    return Err(DiskSpecError::Duplicate("overlay"));
                }
            } else if let Some(id) = part.strip_prefix("id=") {
                if id.is_empty()
                    || id.len() > MAX_ID_LEN
                    || !id.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(DiskSpecError::BadId(id.to_string()));
                }
                if spec.id.replace(id.to_string()).is_some() {
                    return Err(DiskSpecError::Duplicate("id"));
                }
            } else {
                return Err(DiskSpecError::UnknownOption(part.to_string()));
            }
        }
        Ok(spec)
    }
}

impl DiskSpec {
    /// Open the backend this spec describes. With `overlay`, a missing overlay is created over
    /// `path` (virtual size = base size rounded up to 512 bytes); the base is never opened for
    /// writing. Without it, a qcow2 `path` is served as qcow2, anything else as raw.
    pub fn open(&self) -> Result<Box<dyn DiskBackend>, DiskError> {
        if let Some(overlay) = &self.overlay {
            if !overlay.exists() {
                let base_len = std::fs::metadata(&self.path)
                    .map_err(DiskError::io("reading the base image size"))?
                    .len();
                create_overlay(&self.path, overlay, base_len.next_multiple_of(512).max(512))?;
            }
            return Ok(Box::new(Qcow2Disk::open(overlay, !self.read_only)?));
        }
        if is_qcow2(&self.path)? {
            return Ok(Box::new(Qcow2Disk::open(&self.path, !self.read_only)?));
        }
        Ok(Box::new(RawDisk::open(&self.path, self.read_only)?))
    }
}

fn is_qcow2(path: &std::path::Path) -> Result<bool, DiskError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(DiskError::io("opening the disk image"))?;
    let mut magic = [0u8; 4];
    let n = file
        .read_at(&mut magic, 0)
        .map_err(DiskError::io("reading the disk image"))?;
    Ok(n == 4 && magic == *b"QFI\xfb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_option() {
        let s: DiskSpec = "/a/b.img,ro,overlay=/c/d.qcow2,id=system".parse().unwrap();
        assert_eq!(s.path, PathBuf::from("/a/b.img"));
        assert!(s.read_only);
        assert_eq!(s.overlay, Some(PathBuf::from("/c/d.qcow2")));
        assert_eq!(s.id.as_deref(), Some("system"));
        let plain: DiskSpec = "disk.raw".parse().unwrap();
        assert_eq!(
            plain,
            DiskSpec {
                path: "disk.raw".into(),
                read_only: false,
                overlay: None,
                id: None
            }
        );
    }

    #[test]
    fn rejects_bad_arguments_with_clear_errors() {
        let bad = |s: &str| s.parse::<DiskSpec>().unwrap_err();
        assert_eq!(bad(""), DiskSpecError::MissingPath);
        assert_eq!(bad(",ro"), DiskSpecError::MissingPath);
        assert_eq!(bad("a,rw"), DiskSpecError::UnknownOption("rw".into()));
        assert_eq!(bad("a,ro,ro"), DiskSpecError::Duplicate("ro"));
        assert_eq!(bad("a,overlay="), DiskSpecError::EmptyOverlay);
        assert_eq!(
            bad("a,overlay=x,overlay=y"),
            DiskSpecError::Duplicate("overlay")
        );
        assert_eq!(bad("a,id="), DiskSpecError::BadId("".into()));
        assert_eq!(
            bad("a,id=123456789012345678901"),
            DiskSpecError::BadId("123456789012345678901".into())
        );
        assert_eq!(bad("a,id=sp ace"), DiskSpecError::BadId("sp ace".into()));
        assert!(bad("a,bogus").to_string().contains("bogus"));
    }

    #[test]
    fn open_creates_overlay_and_keeps_base() {
        let dir = crate::testutil::TempDir::new("spec");
        let base = dir.path("base.raw");
        let data = crate::testutil::pattern(5, 1 << 20);
        std::fs::write(&base, &data).unwrap();
        let spec: DiskSpec = format!(
            "{},overlay={}",
            base.display(),
            dir.path("ov.qcow2").display()
        )
        .parse()
        .unwrap();
        let mut disk = spec.open().unwrap();
        assert_eq!(disk.capacity(), 1 << 20);
        disk.write_at(&[9u8; 4096], 8192).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let mut again =
            crate::testutil::until_unlocked(|| spec.open(), |e| matches!(e, DiskError::Locked(_)));
        let mut buf = [0u8; 4096];
        again.read_at(&mut buf, 8192).unwrap();
        assert_eq!(buf, [9u8; 4096]);
        assert_eq!(std::fs::read(&base).unwrap(), data);
        // A second writer of the same overlay is refused while the first has it.
        let err = spec.open().err().unwrap();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(again);
        // A qcow2 given as the path is served as qcow2; ro is honoured.
        let direct: DiskSpec = format!("{},ro", dir.path("ov.qcow2").display())
            .parse()
            .unwrap();
        // The writer's lock goes with its last file handle, which may close just after drop.
        let mut ro =
            crate::testutil::until_unlocked(|| direct.open(), |e| e.to_string().contains("in use"));
        assert!(ro.read_only());
        assert!(matches!(
            ro.write_at(&[0; 512], 0),
            Err(DiskError::Qcow2(_))
        ));
        let missing: DiskSpec = "/nonexistent/disk.img".parse().unwrap();
        assert!(missing
            .open()
            .err()
            .unwrap()
            .to_string()
            .contains("opening the disk image"));
    }
}
