//! App pages: the title bar, then Paint's white sheet, Info's table, or Clock's big face.

use super::apps::App;
use super::layout::Layout;
use crate::canvas::{Canvas, Color, Rect};
use crate::clock::WallTime;
use crate::font::Fonts;
use crate::sysinfo::DeviceInfo;

const PAINT_BG: Color = 0xffffff;
const INFO_BG: Color = 0xf5f5f5;
const CLOCK_BG: Color = 0x101820;

/// Draws `app`'s page below the status bar.
pub fn draw_page(
    canvas: &mut Canvas,
    fonts: &mut Fonts,
    l: &Layout,
    app: App,
    info: &DeviceInfo,
    now: &WallTime,
) {
    let bar = l.title_bar;
    canvas.fill_rect(bar, app.color());
    let px = l.px(40.0, 10);
    let top = bar.y + (bar.h - px as i32 * 5 / 4) / 2;
    let back = l.back_button;
    fonts.draw_centered(
        canvas,
        "\u{2190}",
        (back.center().0, top),
        px,
        0xffffff,
        back,
    );
    fonts.draw(canvas, app.name(), (back.right(), top), px, 0xffffff, bar);
    match app {
        App::Paint => {
            let c = l.clear_button;
            fonts.draw_centered(
                canvas,
                "Clear",
                (c.center().0, top + px as i32 / 8),
                px * 3 / 4,
                0xffffff,
                c,
            );
            clear_paint(canvas, l);
        }
        App::Info => draw_info(canvas, fonts, l, info),
        App::Clock => draw_clock_face(canvas, fonts, l, now),
        _ => canvas.fill_rect(l.content, PAINT_BG),
    }
}

/// Blanks the Paint sheet.
pub fn clear_paint(canvas: &mut Canvas, l: &Layout) {
    canvas.fill_rect(l.content, PAINT_BG);
}

/// One stroke segment on the Paint sheet; only its pixels' bounding box becomes damage.
pub fn paint_stroke(
    canvas: &mut Canvas,
    l: &Layout,
    from: (i32, i32),
    to: (i32, i32),
    color: Color,
) -> Rect {
    let r = l.px(8.0, 2) as f32;
    let centre = |p: (i32, i32)| (p.0 as f32 + 0.5, p.1 as f32 + 0.5);
    canvas.fill_capsule(centre(from), centre(to), r, color, l.content)
}

/// The device table: one row per key, label left, value right.
fn draw_info(canvas: &mut Canvas, fonts: &mut Fonts, l: &Layout, info: &DeviceInfo) {
    let content = l.content;
    canvas.fill_rect(content, INFO_BG);
    let label_px = l.px(24.0, 8);
    let value_px = l.px(28.0, 8);
    let row_h = l.px(60.0, 14) as i32;
    let margin = l.px(24.0, 4) as i32;
    let value_x = content.x + content.w * 38 / 100;
    let mut y = content.y + margin;
    for (i, (key, value)) in info.rows().iter().enumerate() {
        if y + row_h > content.bottom() {
            break;
        }
        if i % 2 == 1 {
            canvas.fill_rect(Rect::new(content.x, y, content.w, row_h), 0xe8eaf6);
        }
        let text_y = |px: u32| y + (row_h - px as i32 * 5 / 4) / 2;
        let row_clip = Rect::new(content.x, y, content.w, row_h);
        fonts.draw(
            canvas,
            key,
            (margin, text_y(label_px)),
            label_px,
            0x607d8b,
            Rect::new(0, y, value_x - margin / 2, row_h),
        );
        fonts.draw(
            canvas,
            value,
            (value_x, text_y(value_px)),
            value_px,
            0x212121,
            row_clip,
        );
        y += row_h;
    }
}

/// The Clock page body: a big HH:MM with the date under it.
pub fn draw_clock_face(canvas: &mut Canvas, fonts: &mut Fonts, l: &Layout, now: &WallTime) {
    let c = l.content;
    canvas.fill_rect(c, CLOCK_BG);
    let big = ((c.w as u32) * 26 / 100).min(c.h as u32 / 3).max(12);
    let small = l.px(36.0, 8);
    let total = big as i32 * 5 / 4 + small as i32 * 2;
    let top = c.y + (c.h - total) / 2;
    fonts.draw_centered(canvas, &now.hhmm(), (c.center().0, top), big, 0xffffff, c);
    fonts.draw_centered(
        canvas,
        &now.date(),
        (c.center().0, top + big as i32 * 5 / 4 + small as i32 / 2),
        small,
        0x90a4ae,
        c,
    );
}
