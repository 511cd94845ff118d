//! Framebuffer export: the scanout's pixels live in a shared-memory file the VMM exposes
//! (`GET /framebuffer` gives its path and geometry); each RESOURCE_FLUSH of the scanout bumps a
//! sequence number and publishes a [`Damage`] event (`GET /framebuffer/events`).

mod consumer;
mod damage;
mod format;
mod screenshot;
mod shm;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vm_memory::VolatileSlice;

pub use consumer::MappedFramebuffer;
pub use damage::{Damage, DamageReceiver, RecvError, SUBSCRIBER_QUEUE_LEN};
pub use format::PixelFormat;
pub use screenshot::{encode_png, screenshot_png, screenshot_png_from_file, ScreenshotError};
use shm::SharedMemory;

/// Where framebuffer files go unless the VMM says otherwise: tmpfs, shareable by path.
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Where the VMM creates its framebuffer file, and where the host sees that directory. They
/// differ for a jailed VMM: it writes inside its own root (a tmpfs bind-mounted there), while
/// consumers outside its mount namespace must be told the host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDir {
    /// The directory as the VMM opens it.
    pub dir: PathBuf,
    /// The same directory as host processes (serve, the relay) open it.
    pub host_dir: PathBuf,
}

impl ExportDir {
    /// A directory the VMM and the host see under the same path (no jail).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            host_dir: dir.to_path_buf(),
        }
    }
}

impl Default for ExportDir {
    fn default() -> Self {
        Self::new(Path::new(DEFAULT_DIR))
    }
}

/// What a consumer needs to map and interpret the framebuffer (the `GET /framebuffer` body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FramebufferInfo {
    /// Shared-memory file to open read-only and `mmap`.
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    pub format: PixelFormat,
    /// Number of flushes published so far; changes whenever pixels may have changed.
    pub seq: u64,
}

/// Layout of the pixels currently in the shared file (the scanned-out resource's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

impl Geometry {
    pub(crate) fn stride(&self) -> u32 {
        self.width * PixelFormat::BYTES_PER_PIXEL
    }

    pub(crate) fn bytes(&self) -> usize {
        self.stride() as usize * self.height as usize
    }
}

struct Shared {
    shm: SharedMemory,
    /// The file's path as the host sees it (what `info` reports).
    host_path: PathBuf,
    state: Mutex<(Geometry, u64)>,
    hub: damage::DamageHub,
}

/// Handle to one display's exported framebuffer. Cheap to clone and thread-safe: the device
/// writes, the VMM's API threads read `info`, subscribe to damage and take screenshots.
#[derive(Clone)]
pub struct FramebufferExport {
    shared: Arc<Shared>,
}

impl FramebufferExport {
    /// Create the shared file in `dir` sized for a `width`×`height` 32-bit scanout. Until the
    /// guest sets a scanout it reads as black B8G8R8X8 at that size.
    pub fn create(dir: &Path, width: u32, height: u32) -> io::Result<Self> {
        Self::create_in(&ExportDir::new(dir), width, height)
    }

    /// [`FramebufferExport::create`] in `export.dir`, reporting the file under `export.host_dir`.
    pub fn create_in(export: &ExportDir, width: u32, height: u32) -> io::Result<Self> {
        let geometry = Geometry {
            width,
            height,
            format: PixelFormat::B8G8R8X8,
        };
        let shm = SharedMemory::create(&export.dir, geometry.bytes())?;
        let name = shm.path().file_name().unwrap_or_default();
        Ok(Self {
            shared: Arc::new(Shared {
                host_path: export.host_dir.join(name),
                shm,
                state: Mutex::new((geometry, 0)),
                hub: damage::DamageHub::default(),
            }),
        })
    }

    /// Path, geometry and sequence number of the current frame.
    pub fn info(&self) -> FramebufferInfo {
        let (geometry, seq) = *self.state();
        FramebufferInfo {
            path: self.shared.host_path.clone(),
            width: geometry.width,
            height: geometry.height,
            stride: geometry.stride(),
            format: geometry.format,
            seq,
        }
    }

    /// A new damage subscription; events start with the next flush.
    pub fn subscribe(&self) -> DamageReceiver {
        self.shared.hub.subscribe()
    }

    /// The shared file itself, for passing its fd over a Unix socket.
    pub fn file(&self) -> &std::fs::File {
        self.shared.shm.file()
    }

    /// Largest frame (bytes) the file holds; scanouts must fit.
    pub fn capacity(&self) -> usize {
        self.shared.shm.len()
    }

    /// A copy of the current frame (`stride * height` bytes) and its description.
    pub fn read_frame(&self) -> (FramebufferInfo, Vec<u8>) {
        let info = self.info();
        let len = info.stride as usize * info.height as usize;
        let mut pixels = vec![0u8; len];
        if let Some(slice) = self.shared.shm.slice(0, len) {
            slice.copy_to(&mut pixels[..]);
        }
        (info, pixels)
    }

    /// `count` bytes of the shared frame at `offset`, for the device to write into.
    pub(crate) fn pixels(&self, offset: usize, count: usize) -> Option<VolatileSlice<'_>> {
        self.shared.shm.slice(offset, count)
    }

    /// The scanout now shows a resource with this geometry (it fits: callers check capacity).
    pub(crate) fn set_geometry(&self, geometry: Geometry) {
        self.state().0 = geometry;
    }

    /// Publish a flush of `(x, y, width, height)`; returns the event sent.
    pub(crate) fn publish(&self, x: u32, y: u32, width: u32, height: u32) -> Damage {
        let seq = {
            let mut state = self.state();
            state.1 += 1;
            state.1
        };
        let event = Damage {
            seq,
            x,
            y,
            width,
            height,
            coalesced: false,
        };
        self.shared.hub.publish(event);
        event
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (Geometry, u64)> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for FramebufferExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FramebufferExport")
            .field(&self.info())
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An export in a per-test temporary directory under the target dir's tmp (tmpfs or not).
    pub(crate) fn test_export(width: u32, height: u32) -> FramebufferExport {
        FramebufferExport::create(&std::env::temp_dir(), width, height).unwrap()
    }

    #[test]
    fn info_reports_file_geometry_and_seq() {
        let export = test_export(4, 3);
        let info = export.info();
        assert_eq!(
            (info.width, info.height, info.stride, info.seq),
            (4, 3, 16, 0)
        );
        assert_eq!(std::fs::metadata(&info.path).unwrap().len(), 48);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["format"], "B8G8R8X8");
        assert_eq!(json["stride"], 16);
        export.publish(0, 0, 1, 1);
        assert_eq!(export.info().seq, 1);
    }

    #[test]
    fn consumer_mapping_sees_device_writes_and_file_is_removed_on_drop() {
        let export = test_export(2, 2);
        export.pixels(4, 4).unwrap().copy_from(&[1u8, 2, 3, 4][..]);
        let path = export.info().path;
        assert_eq!(std::fs::read(&path).unwrap()[4..8], [1, 2, 3, 4]);
        assert_eq!(export.read_frame().1[4..8], [1, 2, 3, 4]);
        assert!(
            export.pixels(16, 1).is_none(),
            "past the end must be refused"
        );
        drop(export);
        assert!(!path.exists());
    }

    #[test]
    fn a_jailed_export_reports_the_host_path() {
        let dir = std::env::temp_dir();
        let export = ExportDir {
            dir: dir.clone(),
            host_dir: PathBuf::from("/host/phones/ph_1/shm"),
        };
        let fb = FramebufferExport::create_in(&export, 2, 2).unwrap();
        let reported = fb.info().path;
        assert_eq!(reported.parent(), Some(export.host_dir.as_path()));
        assert!(dir.join(reported.file_name().unwrap()).exists());
    }

    #[test]
    fn create_in_missing_dir_names_the_path() {
        let err = FramebufferExport::create(Path::new("/nonexistent-dir-xyz"), 2, 2).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir-xyz"), "{err}");
    }
}
