//! The home screen (wallpaper, app grid, dock) and the status bar shared by every page.

use super::apps::App;
use super::layout::Layout;
use crate::canvas::{Canvas, Rect};
use crate::font::Fonts;

/// Wallpaper gradient, top and bottom.
pub const WALLPAPER: (u32, u32) = (0x1e3c72, 0x2a5298);
/// Status bar background.
pub const STATUS_BAR_BG: u32 = 0x0d1b2a;
/// The dock's band.
pub const DOCK_BG: u32 = 0x4a6ea8;
const WHITE: u32 = 0xffffff;

/// Draws the whole home screen except the status bar.
pub fn draw_home(canvas: &mut Canvas, fonts: &mut Fonts, l: &Layout) {
    let below_status = Rect::new(
        0,
        l.status_bar.bottom(),
        l.width,
        l.height - l.status_bar.bottom(),
    );
    canvas.fill_vgradient(below_status, WALLPAPER.0, WALLPAPER.1);
    canvas.fill_rounded_rect(l.dock, l.px(36.0, 4) as i32, DOCK_BG);
    let label_px = l.px(24.0, 10);
    for &(app, r) in &l.icons {
        draw_icon(canvas, fonts, app, r);
        if !l.dock.contains(r.x, r.y) {
            let lr = l.label_rect(r);
            fonts.draw_centered(
                canvas,
                app.name(),
                (lr.center().0, lr.y),
                label_px,
                WHITE,
                lr,
            );
        }
    }
}

/// A rounded square in the app's colour with its initial in the middle.
pub fn draw_icon(canvas: &mut Canvas, fonts: &mut Fonts, app: App, r: Rect) {
    canvas.fill_rounded_rect(r, r.w * 22 / 100, app.color());
    let px = (r.h as u32 * 45 / 100).max(6);
    let initial = &app.name()[..1];
    let top = r.y + (r.h - fonts.ascent(px)) / 2;
    fonts.draw_centered(
        canvas,
        initial,
        (r.center().0, top),
        px,
        app.glyph_color(),
        r,
    );
}

/// Draws the status bar: clock on the left; volume, wifi and battery on the right.
pub fn draw_status_bar(canvas: &mut Canvas, fonts: &mut Fonts, l: &Layout, hhmm: &str, volume: u8) {
    let bar = l.status_bar;
    canvas.fill_rect(bar, STATUS_BAR_BG);
    let px = l.px(28.0, 8);
    let text_top = bar.y + (bar.h - px as i32 * 5 / 4) / 2 + 1;
    fonts.draw(canvas, hhmm, (l.status_clock.x, text_top), px, WHITE, bar);

    // Battery: outline, full charge, and the nub.
    let unit = |v: f32| l.px(v, 1) as i32;
    let bh = bar.h * 45 / 100;
    let bw = bh * 2;
    let batt = Rect::new(
        bar.right() - unit(16.0) - bw - unit(4.0),
        bar.y + (bar.h - bh) / 2,
        bw,
        bh,
    );
    canvas.fill_rect(batt, WHITE);
    canvas.fill_rect(batt.inset(unit(2.0)), STATUS_BAR_BG);
    canvas.fill_rect(batt.inset(unit(4.0)), 0x66bb6a);
    canvas.fill_rect(
        Rect::new(batt.right(), batt.y + bh / 4, unit(4.0), bh / 2),
        WHITE,
    );

    // Wifi: three rings opening upwards from a point.
    let size = bar.h as f32 * 0.5;
    let centre = (
        (batt.x - unit(16.0)) as f32 - size * 0.8,
        bar.y as f32 + (bar.h as f32 + size) / 2.0,
    );
    let band = size / 4.0;
    for i in 0..3 {
        let outer = band * (1.0 + 1.4 * i as f32);
        let inner = if i == 0 { 0.0 } else { outer - band * 0.8 };
        canvas.fill_arc_up(centre, inner, outer, WHITE);
    }

    let vol = format!("\u{266a}{volume}");
    let vol_w = fonts.measure(&vol, px);
    let vol_x = (centre.0 - size * 1.2) as i32 - unit(16.0) - vol_w;
    fonts.draw(canvas, &vol, (vol_x, text_top), px, 0xb0bec5, bar);
    canvas.add_damage(bar);
}
