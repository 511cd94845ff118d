//! Getting pixels onto the virtio-gpu scanout: DRM/KMS dumb buffers with DIRTYFB damage
//! (preferred; virtio_gpu turns each clip into TRANSFER_TO_HOST_2D + RESOURCE_FLUSH of that
//! rectangle), or the fbdev emulation at /dev/fb0 when there is no DRM device.

mod console;
mod drm;
mod fbdev;
mod mapping;

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::canvas::{Canvas, Rect};

pub use console::stop_text_console;

/// A scanout the agent can draw on.
pub trait Display {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// Copies the damaged rectangles of `canvas` to the scanout and tells the device.
    fn present(&mut self, canvas: &Canvas, damage: &[Rect]) -> anyhow::Result<()>;
    /// Turns the panel off (power key) or back on.
    fn set_power(&mut self, on: bool) -> anyhow::Result<()>;
    /// Short description for logs.
    fn describe(&self) -> String;
}

/// DRM card node.
pub const DRM_CARD: &str = "/dev/dri/card0";
/// fbdev node.
pub const FBDEV: &str = "/dev/fb0";

/// Which device to draw on (kernel cmdline `cloudphone.display=drm|fbdev`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// DRM/KMS, falling back to fbdev when there is no usable DRM device.
    Drm,
    /// fbdev only (for kernels or tests without DRM).
    Fbdev,
}

/// Waits until a display node exists (up to `wait`) and opens it.
pub fn open(backend: Backend, wait: Duration) -> anyhow::Result<Box<dyn Display>> {
    let deadline = Instant::now() + wait;
    let exists = |p: &str| std::path::Path::new(p).exists();
    loop {
        let expired = Instant::now() >= deadline;
        if backend == Backend::Drm && exists(DRM_CARD) {
            match drm::DrmDisplay::open(DRM_CARD) {
                Ok(d) => return Ok(Box::new(d)),
                Err(e) if exists(FBDEV) => {
                    tracing::warn!("DRM unusable ({e:#}); falling back to {FBDEV}");
                    return Ok(Box::new(fbdev::FbDisplay::open(FBDEV)?));
                }
                Err(e) if expired => return Err(e),
                Err(e) => tracing::debug!("DRM not ready yet: {e:#}"),
            }
        } else if exists(FBDEV) && (backend == Backend::Fbdev || expired) {
            return Ok(Box::new(fbdev::FbDisplay::open(FBDEV)?));
        }
        if expired {
            bail!("no display: neither {DRM_CARD} nor {FBDEV} appeared within {wait:?}; is the virtio_gpu module loaded and a --gpu device configured?");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies the rectangles of `canvas` into an XRGB8888 buffer with row pitch `pitch` bytes.
pub fn copy_rects(canvas: &Canvas, damage: &[Rect], dst: &mut [u8], pitch: usize) {
    let src = canvas.pixels();
    let cw = canvas.width() as usize;
    for r in damage {
        let r = r.intersect(&canvas.bounds());
        for y in r.y as usize..r.bottom() as usize {
            let row = &src[y * cw + r.x as usize..y * cw + r.right() as usize];
            let start = y * pitch + r.x as usize * 4;
            let Some(out) = dst.get_mut(start..start + row.len() * 4) else {
                continue;
            };
            for (o, p) in out.chunks_exact_mut(4).zip(row) {
                o.copy_from_slice(&p.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rects_honours_pitch_and_bounds() {
        let mut c = Canvas::new(4, 3);
        c.fill_rect(Rect::new(1, 1, 2, 1), 0x112233);
        let pitch = 4 * 4 + 8; // padded rows
        let mut dst = vec![0xeeu8; pitch * 3];
        copy_rects(
            &c,
            &[Rect::new(1, 1, 2, 1), Rect::new(-5, -5, 100, 1)],
            &mut dst,
            pitch,
        );
        assert_eq!(
            &dst[pitch + 4..pitch + 12],
            &[0x33, 0x22, 0x11, 0, 0x33, 0x22, 0x11, 0]
        );
        assert_eq!(dst[pitch], 0xee, "pixels outside the damage are untouched");
        assert_eq!(dst[pitch - 1], 0xee, "row padding is untouched");
        // A short destination never panics.
        copy_rects(&c, &[c.bounds()], &mut [0u8; 10], pitch);
    }
}
