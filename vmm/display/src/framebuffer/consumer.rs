//! The consumer side of the export, for other processes (the stream encoder, `cloudphone-stream`):
//! map the shared file read-only from a [`FramebufferInfo`] (as served by `GET /framebuffer`)
//! and copy frames or damaged rectangles out of it.

use std::fs::File;
use std::io;

use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use super::{FramebufferInfo, PixelFormat};

/// A read-only mapping of an exported framebuffer file.
pub struct MappedFramebuffer {
    map: MmapRegion<()>,
}

impl MappedFramebuffer {
    /// Map the file named by `info` read-only; the mapping covers the whole file, so later
    /// geometry changes (same file) stay readable.
    pub fn open(info: &FramebufferInfo) -> io::Result<Self> {
        let file = File::open(&info.path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening framebuffer {}: {e}", info.path.display()),
            )
        })?;
        let len = file.metadata()?.len() as usize;
        let map = MmapRegion::build(
            Some(FileOffset::new(file, 0)),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
        )
        .map_err(|e| {
            io::Error::other(format!("mapping framebuffer {}: {e}", info.path.display()))
        })?;
        Ok(Self { map })
    }

    /// Copy the `width`×`height` rectangle at (`x`, `y`) of a frame laid out as `info` into
    /// tightly packed rows (`width * 4` bytes each). `None` if it lies outside the mapping.
    pub fn copy_rect(
        &self,
        info: &FramebufferInfo,
        x: u32,
        y: u32,
        width: u32,
        height: u32,
    ) -> Option<Vec<u8>> {
        let bpp = PixelFormat::BYTES_PER_PIXEL as usize;
        if x.checked_add(width)? > info.width || y.checked_add(height)? > info.height {
            return None;
        }
        let row = width as usize * bpp;
        let mut out = vec![0u8; row * height as usize];
        for (r, dst) in out
            .chunks_exact_mut(row.max(1))
            .enumerate()
            .take(height as usize)
        {
            let offset = (y as usize + r) * info.stride as usize + x as usize * bpp;
            self.map.get_slice(offset, row).ok()?.copy_to(dst);
        }
        Some(out)
    }

    /// The whole frame described by `info` (`stride * height` bytes).
    pub fn frame(&self, info: &FramebufferInfo) -> Option<Vec<u8>> {
        let len = info.stride as usize * info.height as usize;
        let mut out = vec![0u8; len];
        self.map.get_slice(0, len).ok()?.copy_to(&mut out[..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::tests::test_export;

    #[test]
    fn reads_what_the_device_writes_and_refuses_outside_rects() {
        let export = test_export(4, 2);
        let frame: Vec<u8> = (0..32).collect();
        export.pixels(0, 32).unwrap().copy_from(&frame[..]);
        let info = export.info();
        let mapped = MappedFramebuffer::open(&info).unwrap();
        assert_eq!(mapped.frame(&info).unwrap(), frame);
        // Pixels (1..3, 1) = bytes 16+4 .. 16+12.
        assert_eq!(
            mapped.copy_rect(&info, 1, 1, 2, 1).unwrap(),
            (20..28).collect::<Vec<u8>>()
        );
        assert!(mapped.copy_rect(&info, 3, 0, 2, 1).is_none());
        assert!(mapped.copy_rect(&info, u32::MAX, 0, 2, 1).is_none());
        // Later device writes are visible through the same mapping.
        export.pixels(0, 1).unwrap().copy_from(&[0xee_u8][..]);
        assert_eq!(mapped.frame(&info).unwrap()[0], 0xee);
    }
}
