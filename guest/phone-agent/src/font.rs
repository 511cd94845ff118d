//! Text rendering with `fontdue` and the DejaVuSans font embedded at build time (see build.rs).

use std::collections::HashMap;

use crate::canvas::{Canvas, Color, Rect};

/// The TTF bytes copied from `fonts-dejavu-core` by build.rs.
static FONT_TTF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ui-font.ttf"));

/// Glyph bitmaps cached before the cache is emptied: labels use a handful of sizes and a
/// few dozen characters, so this bounds memory whatever text the Info page is fed.
const GLYPH_CACHE_CAP: usize = 1024;

/// Longest text drawn in one call, in characters: guest-supplied strings (cmdline values)
/// are cut here so a hostile value cannot make one redraw arbitrarily slow.
pub const MAX_TEXT_CHARS: usize = 96;

/// A rasterised glyph.
struct Glyph {
    metrics: fontdue::Metrics,
    coverage: Vec<u8>,
}

/// The UI font plus a cache of rasterised glyphs keyed by (char, pixel size).
pub struct Fonts {
    font: fontdue::Font,
    cache: HashMap<(char, u32), Glyph>,
}

impl Fonts {
    /// Parses the embedded font.
    pub fn new() -> Self {
        let font = fontdue::Font::from_bytes(FONT_TTF, fontdue::FontSettings::default())
            .expect("the font embedded by build.rs is a valid TTF");
        Fonts {
            font,
            cache: HashMap::new(),
        }
    }

    fn glyph(&mut self, c: char, px: u32) -> &Glyph {
        if self.cache.len() >= GLYPH_CACHE_CAP && !self.cache.contains_key(&(c, px)) {
            self.cache.clear();
        }
        let font = &self.font;
        self.cache.entry((c, px)).or_insert_with(|| {
            let (metrics, coverage) = font.rasterize(c, px as f32);
            Glyph { metrics, coverage }
        })
    }

    /// Pixel distance from the top of a line to its baseline at size `px`.
    pub fn ascent(&self, px: u32) -> i32 {
        self.font
            .horizontal_line_metrics(px as f32)
            .map_or(px as i32 * 4 / 5, |m| m.ascent.ceil() as i32)
    }

    /// Width of `text` in pixels at size `px`.
    pub fn measure(&mut self, text: &str, px: u32) -> i32 {
        let px = px.max(1);
        text.chars()
            .take(MAX_TEXT_CHARS)
            .map(|c| self.glyph(c, px).metrics.advance_width)
            .sum::<f32>()
            .ceil() as i32
    }

    /// Draws `text` with its line top-left at `(x, y)`, clipped to `clip`; returns the box it
    /// covers (line height × advance width).
    pub fn draw(
        &mut self,
        canvas: &mut Canvas,
        text: &str,
        (x, y): (i32, i32),
        px: u32,
        color: Color,
        clip: Rect,
    ) -> Rect {
        let px = px.max(1);
        let baseline = y + self.ascent(px);
        let mut pen = x as f32;
        for c in text.chars().take(MAX_TEXT_CHARS) {
            let g = self.glyph(c, px);
            let m = g.metrics;
            let gx = pen.round() as i32 + m.xmin;
            let gy = baseline - m.height as i32 - m.ymin;
            for row in 0..m.height {
                for col in 0..m.width {
                    let a = g.coverage[row * m.width + col] as u32;
                    let (dx, dy) = (gx + col as i32, gy + row as i32);
                    if clip.contains(dx, dy) {
                        canvas.blend_pixel(dx, dy, color, a);
                    }
                }
            }
            pen += m.advance_width;
        }
        let r = Rect::new(
            x,
            y,
            pen.ceil() as i32 - x,
            (px as f32 * 1.25).ceil() as i32,
        )
        .intersect(&clip);
        canvas.add_damage(r);
        r
    }

    /// Draws `text` horizontally centred on `cx`, line top at `y`.
    pub fn draw_centered(
        &mut self,
        canvas: &mut Canvas,
        text: &str,
        (cx, y): (i32, i32),
        px: u32,
        color: Color,
        clip: Rect,
    ) -> Rect {
        let w = self.measure(text, px);
        self.draw(canvas, text, (cx - w / 2, y), px, color, clip)
    }
}

impl Default for Fonts {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_renders_ink() {
        let mut f = Fonts::new();
        let mut c = Canvas::new(200, 60);
        let clip = c.bounds();
        let r = f.draw(&mut c, "Paint", (10, 10), 24, 0xffffff, clip);
        let ink = c.region(r).iter().filter(|&&p| p != 0).count();
        assert!(ink > 50, "label 'Paint' left only {ink} lit pixels");
        assert!(r.w > 40 && r.w < 120, "width {}", r.w);
        // Nothing is drawn outside the reported box.
        let total = c.pixels().iter().filter(|&&p| p != 0).count();
        assert_eq!(ink, total);
    }

    #[test]
    fn measure_grows_with_text_and_size() {
        let mut f = Fonts::new();
        assert!(f.measure("Info", 20) < f.measure("Info page", 20));
        assert!(f.measure("Info", 20) < f.measure("Info", 40));
        assert_eq!(f.measure("", 20), 0);
    }

    #[test]
    fn hostile_text_is_bounded() {
        let mut f = Fonts::new();
        let long = "W".repeat(10_000);
        assert_eq!(f.measure(&long, 10), f.measure(&long[..MAX_TEXT_CHARS], 10));
    }
}
