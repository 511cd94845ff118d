//! An XRGB8888 pixel buffer with damage tracking: the UI draws here on the host and in the
//! guest alike, and the display backend copies only the damaged rectangles to the scanout.

/// A pixel colour as `0x00RRGGBB` (XRGB8888, the format of the scanout).
pub type Color = u32;

/// Most damage rectangles kept before they are folded into their bounding box; the DIRTYFB
/// ioctl and the host's flush path are cheaper with a few rectangles than with many.
const MAX_DAMAGE_RECTS: usize = 8;

/// An axis-aligned rectangle in pixels; `x + w`, `y + h` are exclusive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub w: i32,
    pub h: i32,
}

impl Rect {
    /// Builds a rectangle from its origin and size.
    pub const fn new(x: i32, y: i32, w: i32, h: i32) -> Self {
        Rect { x, y, w, h }
    }

    /// True when the rectangle covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.w <= 0 || self.h <= 0
    }

    /// Exclusive right edge.
    pub fn right(&self) -> i32 {
        self.x + self.w
    }

    /// Exclusive bottom edge.
    pub fn bottom(&self) -> i32 {
        self.y + self.h
    }

    /// True when the point lies inside.
    pub fn contains(&self, x: i32, y: i32) -> bool {
        x >= self.x && y >= self.y && x < self.right() && y < self.bottom()
    }

    /// The overlap of two rectangles (empty when they do not meet).
    pub fn intersect(&self, o: &Rect) -> Rect {
        let x = self.x.max(o.x);
        let y = self.y.max(o.y);
        let r = self.right().min(o.right());
        let b = self.bottom().min(o.bottom());
        Rect::new(x, y, (r - x).max(0), (b - y).max(0))
    }

    /// The smallest rectangle holding both (an empty one adds nothing).
    pub fn union(&self, o: &Rect) -> Rect {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        let x = self.x.min(o.x);
        let y = self.y.min(o.y);
        Rect::new(
            x,
            y,
            self.right().max(o.right()) - x,
            self.bottom().max(o.bottom()) - y,
        )
    }

    /// Centre point, used for hit-testing and tap targets.
    pub fn center(&self) -> (i32, i32) {
        (self.x + self.w / 2, self.y + self.h / 2)
    }

    /// The same rectangle shrunk by `d` on every side.
    pub fn inset(&self, d: i32) -> Rect {
        Rect::new(
            self.x + d,
            self.y + d,
            (self.w - 2 * d).max(0),
            (self.h - 2 * d).max(0),
        )
    }
}

/// Blends `src` over `dst` with coverage `a` (0..=255).
pub fn blend(dst: Color, src: Color, a: u32) -> Color {
    if a >= 255 {
        return src;
    }
    let mix = |shift: u32| {
        let d = (dst >> shift) & 0xff;
        let s = (src >> shift) & 0xff;
        ((s * a + d * (255 - a) + 127) / 255) << shift
    };
    mix(16) | mix(8) | mix(0)
}

/// Linear interpolation between two colours, `t` in 0..=255.
pub fn lerp(a: Color, b: Color, t: u32) -> Color {
    blend(a, b, t.min(255))
}

/// The drawing surface: pixels plus the rectangles changed since the last flush.
pub struct Canvas {
    width: i32,
    height: i32,
    pixels: Vec<Color>,
    damage: Vec<Rect>,
}

impl Canvas {
    /// A black canvas of `width` × `height` pixels.
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = (
            width.min(i32::MAX as u32) as i32,
            height.min(i32::MAX as u32) as i32,
        );
        Canvas {
            width: w,
            height: h,
            pixels: vec![0; (w as usize) * (h as usize)],
            damage: Vec::new(),
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> i32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> i32 {
        self.height
    }

    /// The whole canvas as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Pixel rows, `width` pixels each, no padding.
    pub fn pixels(&self) -> &[Color] {
        &self.pixels
    }

    /// The pixel at (x, y), or None outside the canvas.
    pub fn get(&self, x: i32, y: i32) -> Option<Color> {
        self.bounds()
            .contains(x, y)
            .then(|| self.pixels[(y * self.width + x) as usize])
    }

    /// Records `r` (clipped) as changed; many rectangles fold into their bounding box.
    pub fn add_damage(&mut self, r: Rect) {
        let r = r.intersect(&self.bounds());
        if r.is_empty() {
            return;
        }
        if self.damage.iter().any(|d| d.intersect(&r) == r) {
            return; // already covered
        }
        self.damage.retain(|d| r.intersect(d) != *d);
        self.damage.push(r);
        if self.damage.len() > MAX_DAMAGE_RECTS {
            let all = self
                .damage
                .iter()
                .fold(Rect::default(), |acc, d| acc.union(d));
            self.damage = vec![all];
        }
    }

    /// Hands over the changed rectangles and forgets them.
    pub fn take_damage(&mut self) -> Vec<Rect> {
        std::mem::take(&mut self.damage)
    }

    /// Writes one pixel with coverage `a`; returns true when it was inside the canvas.
    pub fn blend_pixel(&mut self, x: i32, y: i32, c: Color, a: u32) -> bool {
        if !self.bounds().contains(x, y) || a == 0 {
            return false;
        }
        let p = &mut self.pixels[(y * self.width + x) as usize];
        *p = blend(*p, c, a);
        true
    }

    /// Fills `r` (clipped) with `c` and marks it damaged.
    pub fn fill_rect(&mut self, r: Rect, c: Color) {
        let r = r.intersect(&self.bounds());
        if r.is_empty() {
            return;
        }
        for y in r.y..r.bottom() {
            let row = (y * self.width) as usize;
            self.pixels[row + r.x as usize..row + r.right() as usize].fill(c);
        }
        self.add_damage(r);
    }

    /// Fills `r` with a vertical gradient from `top` to `bottom` colour.
    pub fn fill_vgradient(&mut self, r: Rect, top: Color, bottom: Color) {
        let span = r.h.max(1);
        for y in r.y.max(0)..r.bottom().min(self.height) {
            let t = ((y - r.y) * 255 / span) as u32;
            self.fill_rect(Rect::new(r.x, y, r.w, 1), lerp(top, bottom, t));
        }
        self.add_damage(r);
    }

    /// Fills a rounded rectangle with anti-aliased corners of radius `radius`.
    pub fn fill_rounded_rect(&mut self, r: Rect, radius: i32, c: Color) {
        let rad = radius.clamp(0, r.w.min(r.h) / 2);
        let clip = r.intersect(&self.bounds());
        for y in clip.y..clip.bottom() {
            for x in clip.x..clip.right() {
                // Distance from the nearest corner centre when the pixel is in a corner square.
                let cx = if x < r.x + rad {
                    r.x + rad
                } else if x >= r.right() - rad {
                    r.right() - rad - 1
                } else {
                    x
                };
                let cy = if y < r.y + rad {
                    r.y + rad
                } else if y >= r.bottom() - rad {
                    r.bottom() - rad - 1
                } else {
                    y
                };
                let a = if cx == x || cy == y {
                    255
                } else {
                    let (dx, dy) = ((x - cx) as f32, (y - cy) as f32);
                    coverage(rad as f32 - (dx * dx + dy * dy).sqrt())
                };
                self.blend_pixel(x, y, c, a);
            }
        }
        self.add_damage(clip);
    }

    /// Draws a solid capsule (a thick line with round ends) from `a` to `b` of radius `r`
    /// without anti-aliasing, so every pixel it touches gets exactly `c`. Returns the tight
    /// bounding box of the pixels written (within `clip`), which is also what gets marked damaged.
    pub fn fill_capsule(
        &mut self,
        a: (f32, f32),
        b: (f32, f32),
        r: f32,
        c: Color,
        clip: Rect,
    ) -> Rect {
        let bbox = Rect::new(
            (a.0.min(b.0) - r).floor() as i32,
            (a.1.min(b.1) - r).floor() as i32,
            ((a.0 - b.0).abs() + 2.0 * r).ceil() as i32 + 2,
            ((a.1 - b.1).abs() + 2.0 * r).ceil() as i32 + 2,
        )
        .intersect(&self.bounds())
        .intersect(&clip);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len2 = dx * dx + dy * dy;
        let mut written = Rect::default();
        for y in bbox.y..bbox.bottom() {
            for x in bbox.x..bbox.right() {
                let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                let t = if len2 > 0.0 {
                    (((px - a.0) * dx + (py - a.1) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (ex, ey) = (px - (a.0 + t * dx), py - (a.1 + t * dy));
                if ex * ex + ey * ey <= r * r {
                    self.pixels[(y * self.width + x) as usize] = c;
                    written = written.union(&Rect::new(x, y, 1, 1));
                }
            }
        }
        self.add_damage(written);
        written
    }

    /// Draws a ring segment (for the wifi glyph): pixels at distance `r0..r1` from `centre`
    /// within 45° of straight up.
    pub fn fill_arc_up(&mut self, centre: (f32, f32), r0: f32, r1: f32, c: Color) {
        let bbox = Rect::new(
            (centre.0 - r1) as i32 - 1,
            (centre.1 - r1) as i32 - 1,
            (2.0 * r1) as i32 + 3,
            r1 as i32 + 2,
        )
        .intersect(&self.bounds());
        for y in bbox.y..bbox.bottom() {
            for x in bbox.x..bbox.right() {
                let (dx, dy) = (x as f32 + 0.5 - centre.0, centre.1 - (y as f32 + 0.5));
                let d = (dx * dx + dy * dy).sqrt();
                if dy > 0.0 && dx.abs() <= dy {
                    let a = coverage((d - r0).min(r1 - d) + 0.5);
                    self.blend_pixel(x, y, c, a);
                }
            }
        }
        self.add_damage(bbox);
    }

    /// Copies `r` out as rows of pixels (used by tests and the PNG writer).
    pub fn region(&self, r: Rect) -> Vec<Color> {
        let r = r.intersect(&self.bounds());
        let mut out = Vec::with_capacity((r.w.max(0) * r.h.max(0)) as usize);
        for y in r.y..r.bottom() {
            let row = (y * self.width) as usize;
            out.extend_from_slice(&self.pixels[row + r.x as usize..row + r.right() as usize]);
        }
        out
    }
}

/// Maps a signed distance inside an edge (pixels) to 0..=255 coverage.
fn coverage(d: f32) -> u32 {
    (d.clamp(0.0, 1.0) * 255.0).round() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rect_ops() {
        let a = Rect::new(0, 0, 10, 10);
        let b = Rect::new(5, 5, 10, 10);
        assert_eq!(a.intersect(&b), Rect::new(5, 5, 5, 5));
        assert_eq!(a.union(&b), Rect::new(0, 0, 15, 15));
        assert!(a.intersect(&Rect::new(20, 20, 1, 1)).is_empty());
        assert!(a.contains(9, 9) && !a.contains(10, 9));
    }

    #[test]
    fn blend_extremes() {
        assert_eq!(blend(0x000000, 0xffffff, 255), 0xffffff);
        assert_eq!(blend(0x123456, 0xffffff, 0), 0x123456);
        assert_eq!(blend(0x000000, 0xfefefe, 128), 0x7f7f7f);
    }

    #[test]
    fn fill_is_clipped_and_damaged() {
        let mut c = Canvas::new(10, 10);
        c.fill_rect(Rect::new(-5, 8, 100, 100), 0xff0000);
        assert_eq!(c.get(0, 9), Some(0xff0000));
        assert_eq!(c.get(0, 7), Some(0));
        assert_eq!(c.take_damage(), vec![Rect::new(0, 8, 10, 2)]);
        assert!(c.take_damage().is_empty());
    }

    #[test]
    fn damage_folds_into_bounding_box() {
        let mut c = Canvas::new(100, 100);
        for i in 0..(MAX_DAMAGE_RECTS as i32 + 1) {
            c.add_damage(Rect::new(i * 10, i * 10, 2, 2));
        }
        let d = c.take_damage();
        assert_eq!(d, vec![Rect::new(0, 0, 82, 82)]);
        c.add_damage(Rect::new(0, 0, 50, 50));
        c.add_damage(Rect::new(10, 10, 5, 5)); // covered: dropped
        c.add_damage(Rect::new(0, 0, 100, 100)); // covers: replaces
        assert_eq!(c.take_damage(), vec![Rect::new(0, 0, 100, 100)]);
    }

    #[test]
    fn rounded_rect_corners_are_open() {
        let mut c = Canvas::new(40, 40);
        c.fill_rounded_rect(Rect::new(0, 0, 40, 40), 10, 0xffffff);
        assert_eq!(c.get(0, 0), Some(0));
        assert_eq!(c.get(20, 20), Some(0xffffff));
        assert_eq!(c.get(20, 0), Some(0xffffff));
    }
}
