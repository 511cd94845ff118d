//! The phone UI: a launcher home screen and three app pages, drawn into a [`Canvas`] with
//! damage tracking. Pure (no I/O): the same code renders in the guest and for host goldens.

pub mod apps;
mod home;
pub mod layout;
mod pages;

pub use apps::App;
pub use layout::Layout;

use crate::canvas::Canvas;
use crate::clock::WallTime;
use crate::font::Fonts;
use crate::input::evdev::{Input, Key, TouchAction, MAX_SLOTS};
use crate::sysinfo::DeviceInfo;

/// Which page is on screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Home,
    App(App),
}

impl Screen {
    /// The name used in `SCREEN app=<name>` report lines.
    pub fn name(self) -> &'static str {
        match self {
            Screen::Home => "home",
            Screen::App(App::Paint) => "paint",
            Screen::App(App::Info) => "info",
            Screen::App(App::Clock) => "clock",
            Screen::App(_) => "other",
        }
    }

    /// Parses a name accepted by `phone-agent render --screen`.
    pub fn from_name(name: &str) -> Option<Screen> {
        Some(match name {
            "home" => Screen::Home,
            "paint" => Screen::App(App::Paint),
            "info" => Screen::App(App::Info),
            "clock" => Screen::App(App::Clock),
            _ => return None,
        })
    }
}

/// What an input did beyond drawing, for the agent to act on and report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    None,
    /// Another page is now on screen.
    Screen(Screen),
    /// The power key turned the screen off (false) or on (true).
    Power(bool),
}

/// Stroke colours per touch slot on the Paint page.
const SLOT_COLORS: [u32; MAX_SLOTS] = [
    0xe53935, 0x1e88e5, 0x43a047, 0xfb8c00, 0x8e24aa, 0x00acc1, 0xd81b60, 0x6d4c41, 0x3949ab,
    0x000000,
];

/// Volume steps, like Android's music stream.
const MAX_VOLUME: u8 = 15;

/// Per-finger state: where it went down (for taps) and its last point (for strokes).
#[derive(Clone, Copy, Debug, Default)]
struct Finger {
    down_at: Option<(i32, i32)>,
    last: Option<(i32, i32)>,
}

/// The whole UI state.
pub struct Ui {
    layout: Layout,
    fonts: Fonts,
    screen: Screen,
    /// The page APPSWITCH goes back to.
    recent: Option<App>,
    info: DeviceInfo,
    now: WallTime,
    volume: u8,
    screen_on: bool,
    fingers: [Finger; MAX_SLOTS],
}

impl Ui {
    /// A UI on the home screen; nothing is drawn until [`Ui::redraw`].
    pub fn new(layout: Layout, info: DeviceInfo, now: WallTime) -> Self {
        Ui {
            layout,
            fonts: Fonts::new(),
            screen: Screen::Home,
            recent: None,
            info,
            now,
            volume: MAX_VOLUME / 2,
            screen_on: true,
            fingers: [Finger::default(); MAX_SLOTS],
        }
    }

    /// The layout in use (tap targets for tests and the `layout` command).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The page on screen.
    pub fn screen(&self) -> Screen {
        self.screen
    }

    /// True unless the power key turned the screen off.
    pub fn screen_on(&self) -> bool {
        self.screen_on
    }

    /// Draws the current page completely (the whole canvas becomes damage).
    pub fn redraw(&mut self, canvas: &mut Canvas) {
        if !self.screen_on {
            canvas.fill_rect(canvas.bounds(), 0);
            return;
        }
        match self.screen {
            Screen::Home => home::draw_home(canvas, &mut self.fonts, &self.layout),
            Screen::App(app) => pages::draw_page(
                canvas,
                &mut self.fonts,
                &self.layout,
                app,
                &self.info,
                &self.now,
            ),
        }
        self.draw_status_bar(canvas);
        canvas.add_damage(canvas.bounds());
    }

    /// Switches to `screen` and redraws it.
    pub fn show(&mut self, canvas: &mut Canvas, screen: Screen) -> Effect {
        if let Screen::App(app) = screen {
            self.recent = Some(app);
        }
        self.screen = screen;
        self.fingers = [Finger::default(); MAX_SLOTS];
        self.redraw(canvas);
        Effect::Screen(screen)
    }

    fn draw_status_bar(&mut self, canvas: &mut Canvas) {
        home::draw_status_bar(
            canvas,
            &mut self.fonts,
            &self.layout,
            &self.now.hhmm(),
            self.volume,
        );
    }

    /// Updates the clock; redraws only the status bar (and the Clock page's face) when the
    /// minute changed. Returns true when anything was drawn.
    pub fn set_time(&mut self, canvas: &mut Canvas, now: WallTime) -> bool {
        if now == self.now {
            return false;
        }
        self.now = now;
        if !self.screen_on {
            return false;
        }
        self.draw_status_bar(canvas);
        if self.screen == Screen::App(App::Clock) {
            pages::draw_clock_face(canvas, &mut self.fonts, &self.layout, &self.now);
        }
        true
    }

    /// Handles one decoded input, drawing what it changes.
    pub fn handle(&mut self, canvas: &mut Canvas, input: Input) -> Effect {
        match input {
            Input::Key { key, down: true } => self.key(canvas, key),
            Input::Key { .. } => Effect::None,
            Input::Touch { .. } if !self.screen_on => Effect::None,
            Input::Touch { slot, action, x, y } => {
                self.touch(canvas, slot as usize % MAX_SLOTS, action, (x, y))
            }
        }
    }

    fn key(&mut self, canvas: &mut Canvas, key: Key) -> Effect {
        if key == Key::Power {
            self.screen_on = !self.screen_on;
            self.fingers = [Finger::default(); MAX_SLOTS];
            if self.screen_on {
                // The canvas kept the page (Paint strokes included); only the clock may be
                // stale. Everything is damage because the scanout was off.
                self.draw_status_bar(canvas);
                canvas.add_damage(canvas.bounds());
            }
            return Effect::Power(self.screen_on);
        }
        if !self.screen_on {
            return Effect::None;
        }
        match key {
            Key::Home | Key::Back if self.screen != Screen::Home => self.show(canvas, Screen::Home),
            Key::AppSwitch => match (self.screen, self.recent) {
                (Screen::Home, Some(app)) => self.show(canvas, Screen::App(app)),
                (Screen::App(_), _) => self.show(canvas, Screen::Home),
                _ => Effect::None,
            },
            Key::VolumeUp | Key::VolumeDown => {
                self.volume = if key == Key::VolumeUp {
                    (self.volume + 1).min(MAX_VOLUME)
                } else {
                    self.volume.saturating_sub(1)
                };
                self.draw_status_bar(canvas);
                Effect::None
            }
            _ => Effect::None,
        }
    }

    fn touch(
        &mut self,
        canvas: &mut Canvas,
        slot: usize,
        action: TouchAction,
        p: (i32, i32),
    ) -> Effect {
        let finger = &mut self.fingers[slot];
        let down_at = finger.down_at;
        let last = finger.last;
        match action {
            TouchAction::Down => {
                *finger = Finger {
                    down_at: Some(p),
                    last: Some(p),
                }
            }
            TouchAction::Move => finger.last = Some(p),
            TouchAction::Up => *finger = Finger::default(),
        }
        match self.screen {
            Screen::Home if action == TouchAction::Up => {
                let tapped = down_at.and_then(|d| self.layout.hit_test(d.0, d.1));
                match tapped {
                    Some(app) if app.opens() && self.layout.hit_test(p.0, p.1) == Some(app) => {
                        self.show(canvas, Screen::App(app))
                    }
                    _ => Effect::None,
                }
            }
            Screen::App(app) => {
                let in_title = self.layout.title_bar.contains(p.0, p.1);
                let started_in_title =
                    down_at.is_some_and(|d| self.layout.title_bar.contains(d.0, d.1));
                if action == TouchAction::Up
                    && started_in_title
                    && self.layout.back_button.contains(p.0, p.1)
                {
                    return self.show(canvas, Screen::Home);
                }
                if app == App::Paint {
                    if action == TouchAction::Up
                        && started_in_title
                        && self.layout.clear_button.contains(p.0, p.1)
                    {
                        pages::clear_paint(canvas, &self.layout);
                    } else if !in_title && !started_in_title && action != TouchAction::Up {
                        let from = if action == TouchAction::Down {
                            p
                        } else {
                            last.unwrap_or(p)
                        };
                        pages::paint_stroke(canvas, &self.layout, from, p, SLOT_COLORS[slot]);
                    }
                }
                Effect::None
            }
            Screen::Home => Effect::None,
        }
    }
}

#[cfg(test)]
mod tests;
