//! Framebuffer pixels to the I420 planes video encoders take.

use openh264::formats::YUVSource;
use yuv::{BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix};

use crate::StreamError;

/// Largest frame we accept (8K): a cap so a hostile or corrupt size cannot make us allocate
/// gigabytes.
pub(crate) const MAX_DIMENSION: u32 = 8192;

/// Byte order of a 32-bit framebuffer pixel, as virtio-gpu scanouts use them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelLayout {
    /// B, G, R, X/A in memory (DRM XRGB8888/ARGB8888 on little-endian; virtio B8G8R8X8).
    Bgrx,
    /// R, G, B, X/A in memory (virtio R8G8B8X8/R8G8B8A8).
    Rgbx,
}

/// An I420 (YUV 4:2:0 planar, BT.601 limited range) frame with reusable planes.
pub struct I420Frame {
    width: u32,
    height: u32,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl I420Frame {
    /// Allocate planes for a `width`×`height` frame (both even, 2..=8192).
    pub fn new(width: u32, height: u32) -> Result<Self, StreamError> {
        if width < 2 || height < 2 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(StreamError::Geometry(format!(
                "{width}x{height}: width and height must be even and at least 2"
            )));
        }
        if width > MAX_DIMENSION || height > MAX_DIMENSION {
            return Err(StreamError::Geometry(format!(
                "{width}x{height} exceeds the {MAX_DIMENSION} pixel limit"
            )));
        }
        let (w, h) = (width as usize, height as usize);
        Ok(Self {
            width,
            height,
            y: vec![0; w * h],
            u: vec![0; w * h / 4],
            v: vec![0; w * h / 4],
        })
    }

    /// Frame width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Frame height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The luma plane (stride = width).
    pub fn y_plane(&self) -> &[u8] {
        &self.y
    }

    /// Fill this frame from 32-bit pixels (`stride` bytes per row) using SIMD conversion.
    pub fn fill_from(
        &mut self,
        pixels: &[u8],
        stride: u32,
        layout: PixelLayout,
    ) -> Result<(), StreamError> {
        let needed = stride as u64 * (self.height as u64 - 1) + self.width as u64 * 4;
        if stride < self.width * 4 || (pixels.len() as u64) < needed {
            return Err(StreamError::Geometry(format!(
                "{} bytes with stride {stride} cannot hold {}x{} 32-bit pixels",
                pixels.len(),
                self.width,
                self.height
            )));
        }
        let half = self.width / 2;
        let mut planes = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(&mut self.y),
            y_stride: self.width,
            u_plane: BufferStoreMut::Borrowed(&mut self.u),
            u_stride: half,
            v_plane: BufferStoreMut::Borrowed(&mut self.v),
            v_stride: half,
            width: self.width,
            height: self.height,
        };
        let convert = match layout {
            PixelLayout::Bgrx => yuv::bgra_to_yuv420,
            PixelLayout::Rgbx => yuv::rgba_to_yuv420,
        };
        convert(
            &mut planes,
            pixels,
            stride,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .map_err(|e| StreamError::Convert(e.to_string()))
    }
}

impl YUVSource for I420Frame {
    fn dimensions(&self) -> (usize, usize) {
        (self.width as usize, self.height as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let w = self.width as usize;
        (w, w / 2, w / 2)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_odd_zero_and_huge_sizes() {
        assert!(I420Frame::new(0, 10).is_err());
        assert!(I420Frame::new(721, 1280).is_err());
        assert!(I420Frame::new(720, 1281).is_err());
        assert!(I420Frame::new(16384, 2).is_err());
        assert!(I420Frame::new(720, 1280).is_ok());
    }

    #[test]
    fn rejects_short_buffers_and_small_strides() {
        let mut f = I420Frame::new(4, 4).unwrap();
        assert!(f.fill_from(&[0; 63], 16, PixelLayout::Bgrx).is_err());
        assert!(f.fill_from(&[0; 64], 12, PixelLayout::Bgrx).is_err());
        assert!(f.fill_from(&[0; 64], 16, PixelLayout::Bgrx).is_ok());
    }

    #[test]
    fn white_black_and_red_map_to_bt601_limited_values() {
        let mut f = I420Frame::new(2, 2).unwrap();
        f.fill_from(&[255; 16], 8, PixelLayout::Bgrx).unwrap();
        assert!(
            f.y.iter().all(|&y| (234..=236).contains(&y)),
            "white Y {:?}",
            f.y
        );
        f.fill_from(&[0; 16], 8, PixelLayout::Bgrx).unwrap();
        assert!(
            f.y.iter().all(|&y| (15..=17).contains(&y)),
            "black Y {:?}",
            f.y
        );
        // pure red in BGRX order: V high, U below neutral
        let red = [0u8, 0, 255, 255].repeat(4);
        f.fill_from(&red, 8, PixelLayout::Bgrx).unwrap();
        assert!(
            f.v[0] > 200 && f.u[0] < 128,
            "red U={} V={}",
            f.u[0],
            f.v[0]
        );
        let red_rgbx = [255u8, 0, 0, 255].repeat(4);
        f.fill_from(&red_rgbx, 8, PixelLayout::Rgbx).unwrap();
        assert!(f.v[0] > 200 && f.u[0] < 128);
    }

    #[test]
    fn honours_padded_strides() {
        // 2x2 white frame whose rows are padded to 16 bytes with black garbage
        let mut px = vec![0u8; 32];
        for row in 0..2 {
            px[row * 16..row * 16 + 8].fill(255);
        }
        let mut f = I420Frame::new(2, 2).unwrap();
        f.fill_from(&px, 16, PixelLayout::Bgrx).unwrap();
        assert!(f.y.iter().all(|&y| y > 230));
    }
}
