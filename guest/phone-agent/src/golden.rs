//! Host-side rendering of any page to PNG with the guest's drawing code, so sandbox tests can
//! compare guest screenshots with goldens made by `phone-agent render`.

use std::io::Write;

use crate::canvas::Canvas;
use crate::clock::WallTime;
use crate::sysinfo::DeviceInfo;
use crate::ui::{layout::BadSize, Layout, Screen, Ui};

/// Renders `screen` at `width` × `height` with the given Info rows and clock time.
pub fn render(
    screen: Screen,
    width: u32,
    height: u32,
    info: DeviceInfo,
    now: WallTime,
) -> Result<Canvas, BadSize> {
    let mut ui = Ui::new(Layout::new(width, height)?, info, now);
    let mut canvas = Canvas::new(width, height);
    ui.show(&mut canvas, screen);
    Ok(canvas)
}

/// Encodes the canvas as an 8-bit RGB PNG.
pub fn write_png(canvas: &Canvas, out: impl Write) -> Result<(), png::EncodingError> {
    let mut enc = png::Encoder::new(out, canvas.width() as u32, canvas.height() as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    let rgb: Vec<u8> = canvas
        .pixels()
        .iter()
        .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
        .collect();
    w.write_image_data(&rgb)?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_pixels() {
        let c = render(
            Screen::Home,
            240,
            320,
            DeviceInfo::skeleton(),
            WallTime::parse_hhmm("08:00").unwrap(),
        )
        .unwrap();
        let mut bytes = Vec::new();
        write_png(&c, &mut bytes).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = dec.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (240, 320));
        let (x, y) = (120, 200);
        let p = c.get(x, y).unwrap();
        let o = ((y * 240 + x) * 3) as usize;
        assert_eq!(&buf[o..o + 3], &[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
    }

    #[test]
    fn render_is_deterministic_and_pages_differ() {
        let t = WallTime::parse_hhmm("10:10").unwrap();
        let a = render(Screen::Home, 360, 640, DeviceInfo::skeleton(), t).unwrap();
        let b = render(Screen::Home, 360, 640, DeviceInfo::skeleton(), t).unwrap();
        assert_eq!(a.pixels(), b.pixels());
        let info = render(
            Screen::from_name("info").unwrap(),
            360,
            640,
            DeviceInfo::skeleton(),
            t,
        )
        .unwrap();
        assert_ne!(a.pixels(), info.pixels());
        assert!(render(Screen::Home, 100, 100, DeviceInfo::skeleton(), t).is_err());
    }
}
