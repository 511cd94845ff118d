//! Where everything goes for a given screen size: one place computes every rectangle so
//! drawing and hit-testing cannot disagree. Sizes scale with `unit` (1.0 at 720×1280).

use super::apps::{App, DOCK, GRID};
use crate::canvas::Rect;

/// Smallest screen the layout supports; smaller sizes are refused by [`Layout::new`].
pub const MIN_SIZE: (u32, u32) = (240, 320);
/// Largest screen side accepted (a guard against absurd DRM modes or CLI input).
pub const MAX_SIDE: u32 = 8192;

/// Columns in the app grid (and slots in the dock).
const COLUMNS: i32 = 4;

/// Every rectangle of the UI for one screen size.
#[derive(Clone, Debug)]
pub struct Layout {
    pub width: i32,
    pub height: i32,
    /// Scale factor relative to the 720×1280 design.
    pub unit: f32,
    pub status_bar: Rect,
    /// Where the status bar clock text sits.
    pub status_clock: Rect,
    /// Icon squares on the home screen, grid then dock.
    pub icons: Vec<(App, Rect)>,
    /// The dock's background band.
    pub dock: Rect,
    /// Title bar of an app page.
    pub title_bar: Rect,
    /// The back arrow in the title bar (a tap there goes home).
    pub back_button: Rect,
    /// The "Clear" button on the Paint page.
    pub clear_button: Rect,
    /// An app page's body under the title bar.
    pub content: Rect,
}

/// Why a screen size cannot be laid out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("screen {0}x{1} is outside the supported range (at least 240x320, at most 8192 per side)")]
pub struct BadSize(pub u32, pub u32);

impl Layout {
    /// Lays out a `width` × `height` screen.
    pub fn new(width: u32, height: u32) -> Result<Self, BadSize> {
        if width < MIN_SIZE.0 || height < MIN_SIZE.1 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(BadSize(width, height));
        }
        let (w, h) = (width as i32, height as i32);
        let unit = (w as f32 / 720.0).min(h as f32 / 1280.0);
        let u = |v: f32| (v * unit).round() as i32;

        let status_bar = Rect::new(0, 0, w, u(48.0).max(14));
        let status_clock = Rect::new(u(16.0), 0, u(110.0), status_bar.h);

        let cell_w = w / COLUMNS;
        let icon = ((cell_w as f32 * 0.62) as i32).min(u(140.0)).max(16);
        let row_h = icon + u(80.0);
        let mut icons = Vec::with_capacity(GRID.len() + DOCK.len());
        let grid_top = status_bar.bottom() + u(56.0);
        for (i, app) in GRID.iter().enumerate() {
            let (col, row) = (i as i32 % COLUMNS, i as i32 / COLUMNS);
            let x = col * cell_w + (cell_w - icon) / 2;
            icons.push((*app, Rect::new(x, grid_top + row * row_h, icon, icon)));
        }
        let pad = u(20.0).max(4);
        let dock_h = icon + 2 * pad;
        let margin = u(16.0);
        let dock = Rect::new(margin, h - margin - dock_h, w - 2 * margin, dock_h);
        for (i, app) in DOCK.iter().enumerate() {
            let x = dock.x + i as i32 * dock.w / COLUMNS + (dock.w / COLUMNS - icon) / 2;
            icons.push((*app, Rect::new(x, dock.y + pad, icon, icon)));
        }

        let title_bar = Rect::new(0, status_bar.bottom(), w, u(96.0).max(24));
        let back_button = Rect::new(0, title_bar.y, title_bar.h, title_bar.h);
        let clear_w = u(140.0);
        let clear_button = Rect::new(w - clear_w, title_bar.y, clear_w, title_bar.h);
        let content = Rect::new(0, title_bar.bottom(), w, h - title_bar.bottom());
        Ok(Layout {
            width: w,
            height: h,
            unit,
            status_bar,
            status_clock,
            icons,
            dock,
            title_bar,
            back_button,
            clear_button,
            content,
        })
    }

    /// Scales a design-size length (at 720×1280) to this screen, at least `min` pixels.
    pub fn px(&self, v: f32, min: u32) -> u32 {
        ((v * self.unit).round() as u32).max(min)
    }

    /// The rectangle under an icon that holds its label.
    pub fn label_rect(&self, icon: Rect) -> Rect {
        let gap = self.px(8.0, 1) as i32;
        let cell_w = self.width / COLUMNS;
        Rect::new(
            icon.center().0 - cell_w / 2,
            icon.bottom() + gap,
            cell_w,
            self.px(34.0, 8) as i32,
        )
    }

    /// The app whose icon (or its label, for grid icons) is at (x, y) on the home screen.
    pub fn hit_test(&self, x: i32, y: i32) -> Option<App> {
        self.icons.iter().find_map(|(app, r)| {
            let in_dock = self.dock.contains(r.x, r.y);
            let area = if in_dock {
                *r
            } else {
                r.union(&self.label_rect(*r))
            };
            area.contains(x, y).then_some(*app)
        })
    }

    /// The icon rectangle of `app`.
    pub fn icon(&self, app: App) -> Option<Rect> {
        self.icons.iter().find(|(a, _)| *a == app).map(|(_, r)| *r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prop_assert;
    use proptest::prop_assert_eq;

    #[test]
    fn tap_at_icon_centre_opens_that_app() {
        let l = Layout::new(720, 1280).unwrap();
        for (app, r) in &l.icons {
            let (x, y) = r.center();
            assert_eq!(l.hit_test(x, y), Some(*app), "{app:?} at {r:?}");
        }
        assert_eq!(l.hit_test(5, l.status_bar.bottom() + 5), None);
        assert_eq!(l.hit_test(-1, -1), None);
    }

    #[test]
    fn refuses_tiny_and_huge_screens() {
        assert_eq!(Layout::new(200, 320).unwrap_err(), BadSize(200, 320));
        assert!(Layout::new(240, 100_000).is_err());
        assert!(Layout::new(240, 320).is_ok());
    }

    #[test]
    fn fuzz_any_size_lays_out_inside_the_screen() {
        crate::testutil::fuzz("layout_sizes", (240u32..2000, 320u32..2600), |(w, h)| {
            let l = Layout::new(w, h).unwrap();
            let screen = Rect::new(0, 0, w as i32, h as i32);
            let mut seen: Vec<Rect> = Vec::new();
            for (app, r) in &l.icons {
                prop_assert_eq!(r.intersect(&screen), *r, "{:?} off screen", app);
                prop_assert_eq!(l.hit_test(r.center().0, r.center().1), Some(*app));
                prop_assert!(
                    seen.iter().all(|o| r.intersect(o).is_empty()),
                    "icons overlap at {}x{}",
                    w,
                    h
                );
                seen.push(*r);
            }
            // Grid icons and their labels stay above the dock.
            for (_, r) in l.icons.iter().take(GRID.len()) {
                prop_assert!(
                    l.label_rect(*r).bottom() <= l.dock.y,
                    "grid hits dock at {}x{}",
                    w,
                    h
                );
            }
            prop_assert!(!l.content.is_empty());
            Ok(())
        });
    }
}
