//! The 32-bit pixel formats virtio-gpu 2D resources use, named by their byte order in memory
//! (virtio spec 5.7.6.8), and their conversion to RGBA for screenshots.

use serde::{Deserialize, Serialize};

/// A virtio-gpu 2D pixel format. The name lists bytes in memory order: `B8G8R8X8` is byte 0 =
/// blue, byte 3 = unused (what Linux uses for DRM's XRGB8888 on little-endian hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PixelFormat {
    B8G8R8A8,
    B8G8R8X8,
    A8R8G8B8,
    X8R8G8B8,
    R8G8B8A8,
    X8B8G8R8,
    A8B8G8R8,
    R8G8B8X8,
}

/// Every format with its virtio code; one table so code, name and layout never disagree.
const TABLE: [(PixelFormat, u32); 8] = [
    (PixelFormat::B8G8R8A8, 1),
    (PixelFormat::B8G8R8X8, 2),
    (PixelFormat::A8R8G8B8, 3),
    (PixelFormat::X8R8G8B8, 4),
    (PixelFormat::R8G8B8A8, 67),
    (PixelFormat::X8B8G8R8, 68),
    (PixelFormat::A8B8G8R8, 121),
    (PixelFormat::R8G8B8X8, 134),
];

impl PixelFormat {
    /// Bytes per pixel (all 2D formats are 32-bit).
    pub const BYTES_PER_PIXEL: u32 = 4;

    /// The format for a `virtio_gpu_formats` code, `None` for codes we do not support.
    pub fn from_virtio(code: u32) -> Option<Self> {
        TABLE.iter().find(|(_, c)| *c == code).map(|(f, _)| *f)
    }

    /// The `virtio_gpu_formats` code.
    pub fn virtio_code(self) -> u32 {
        TABLE
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, c)| *c)
            .unwrap_or(0)
    }

    /// Name as the API reports it (`"B8G8R8X8"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::B8G8R8A8 => "B8G8R8A8",
            PixelFormat::B8G8R8X8 => "B8G8R8X8",
            PixelFormat::A8R8G8B8 => "A8R8G8B8",
            PixelFormat::X8R8G8B8 => "X8R8G8B8",
            PixelFormat::R8G8B8A8 => "R8G8B8A8",
            PixelFormat::X8B8G8R8 => "X8B8G8R8",
            PixelFormat::A8B8G8R8 => "A8B8G8R8",
            PixelFormat::R8G8B8X8 => "R8G8B8X8",
        }
    }

    /// Byte offsets of red, green, blue in a pixel, and of alpha if the format has one
    /// (X formats are opaque).
    fn layout(self) -> ([usize; 3], Option<usize>) {
        match self {
            PixelFormat::B8G8R8A8 => ([2, 1, 0], Some(3)),
            PixelFormat::B8G8R8X8 => ([2, 1, 0], None),
            PixelFormat::A8R8G8B8 => ([1, 2, 3], Some(0)),
            PixelFormat::X8R8G8B8 => ([1, 2, 3], None),
            PixelFormat::R8G8B8A8 => ([0, 1, 2], Some(3)),
            PixelFormat::R8G8B8X8 => ([0, 1, 2], None),
            PixelFormat::A8B8G8R8 => ([3, 2, 1], Some(0)),
            PixelFormat::X8B8G8R8 => ([3, 2, 1], None),
        }
    }

    /// Convert one pixel (4 bytes in this format) to RGBA.
    pub fn to_rgba(self, px: &[u8]) -> [u8; 4] {
        let ([r, g, b], a) = self.layout();
        [px[r], px[g], px[b], a.map_or(0xff, |a| px[a])]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_rejected() {
        for (f, code) in TABLE {
            assert_eq!(PixelFormat::from_virtio(code), Some(f));
            assert_eq!(f.virtio_code(), code);
        }
        for bad in [0, 5, 66, 120, 135, u32::MAX] {
            assert_eq!(PixelFormat::from_virtio(bad), None);
        }
    }

    #[test]
    fn rgba_conversion_per_format() {
        // Memory bytes [0x11, 0x22, 0x33, 0x44] in each format.
        let px = [0x11, 0x22, 0x33, 0x44];
        let expect = [
            (PixelFormat::B8G8R8A8, [0x33, 0x22, 0x11, 0x44]),
            (PixelFormat::B8G8R8X8, [0x33, 0x22, 0x11, 0xff]),
            (PixelFormat::A8R8G8B8, [0x22, 0x33, 0x44, 0x11]),
            (PixelFormat::X8R8G8B8, [0x22, 0x33, 0x44, 0xff]),
            (PixelFormat::R8G8B8A8, [0x11, 0x22, 0x33, 0x44]),
            (PixelFormat::R8G8B8X8, [0x11, 0x22, 0x33, 0xff]),
            (PixelFormat::A8B8G8R8, [0x44, 0x33, 0x22, 0x11]),
            (PixelFormat::X8B8G8R8, [0x44, 0x33, 0x22, 0xff]),
        ];
        for (f, rgba) in expect {
            assert_eq!(f.to_rgba(&px), rgba, "{}", f.name());
        }
    }
}
