//! PNG screenshots of the exported framebuffer (`GET /screenshot`).

use super::{FramebufferExport, FramebufferInfo, MappedFramebuffer};

/// Why a screenshot could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ScreenshotError {
    /// The PNG encoder failed (only possible on a bug or out of memory).
    #[error("encoding the screenshot as PNG failed: {0}")]
    Encode(#[from] png::EncodingError),
    /// The framebuffer file named in the info could not be mapped.
    #[error("reading the framebuffer: {0}")]
    Map(#[from] std::io::Error),
    /// The info describes a frame larger than the file (stale info: fetch it again).
    #[error("framebuffer info ({width}x{height}, stride {stride}) does not fit the file; fetch GET /framebuffer again")]
    Stale {
        width: u32,
        height: u32,
        stride: u32,
    },
}

/// The current frame as an RGBA PNG, converted from whatever format the guest scans out.
pub fn screenshot_png(export: &FramebufferExport) -> Result<Vec<u8>, ScreenshotError> {
    let (info, pixels) = export.read_frame();
    encode_png(&info, &pixels)
}

/// A PNG of the frame described by `info` (a `GET /framebuffer` answer), read from the
/// shared file: for processes other than the VMM, which answers `GET /screenshot` itself.
pub fn screenshot_png_from_file(info: &FramebufferInfo) -> Result<Vec<u8>, ScreenshotError> {
    let stale = || ScreenshotError::Stale {
        width: info.width,
        height: info.height,
        stride: info.stride,
    };
    let pixels = MappedFramebuffer::open(info)?
        .frame(info)
        .ok_or_else(stale)?;
    encode_png(info, &pixels)
}

/// Encode a frame laid out as `info` (e.g. from [`super::MappedFramebuffer::frame`]) as an
/// RGBA PNG. Rows past the end of `pixels` are left out (the image gets shorter).
pub fn encode_png(info: &FramebufferInfo, pixels: &[u8]) -> Result<Vec<u8>, ScreenshotError> {
    let rows = (pixels.len() / (info.stride.max(1) as usize)).min(info.height as usize) as u32;
    let mut rgba = Vec::with_capacity(info.width as usize * info.height as usize * 4);
    for row in pixels
        .chunks_exact(info.stride.max(1) as usize)
        .take(rows as usize)
    {
        for px in row.chunks_exact(4).take(info.width as usize) {
            rgba.extend_from_slice(&info.format.to_rgba(px));
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, info.width, rows);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&rgba)?;
    writer.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framebuffer::{tests::test_export, Geometry, PixelFormat};

    #[test]
    fn png_decodes_to_rgba_of_the_scanout_format() {
        let export = test_export(2, 1);
        export.set_geometry(Geometry {
            width: 2,
            height: 1,
            format: PixelFormat::B8G8R8X8,
        });
        // Pixel 0: blue=0x10 green=0x20 red=0x30; pixel 1: red=0xff.
        export
            .pixels(0, 8)
            .unwrap()
            .copy_from(&[0x10u8, 0x20, 0x30, 0x00, 0, 0, 0xff, 0x00][..]);
        let png_bytes = screenshot_png(&export).unwrap();
        let decoder = png::Decoder::new(&png_bytes[..]);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (frame.width, frame.height, frame.color_type),
            (2, 1, png::ColorType::Rgba)
        );
        assert_eq!(&buf[..8], &[0x30, 0x20, 0x10, 0xff, 0xff, 0, 0, 0xff]);
        let from_file = screenshot_png_from_file(&export.info()).unwrap();
        assert_eq!(
            from_file, png_bytes,
            "the consumer-side path encodes the same image"
        );
        let mut stale = export.info();
        stale.height = 1000;
        assert!(matches!(
            screenshot_png_from_file(&stale),
            Err(ScreenshotError::Stale { .. })
        ));
    }
}
