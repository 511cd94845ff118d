use super::*;
use crate::canvas::Rect;

fn ui(w: u32, h: u32) -> (Ui, Canvas) {
    let mut info = DeviceInfo::skeleton();
    info.set("vcpus", "4");
    let mut ui = Ui::new(
        Layout::new(w, h).unwrap(),
        info,
        WallTime::parse_hhmm("12:34").unwrap(),
    );
    let mut c = Canvas::new(w, h);
    ui.redraw(&mut c);
    c.take_damage();
    (ui, c)
}

fn touch(slot: u8, action: TouchAction, (x, y): (i32, i32)) -> Input {
    Input::Touch { slot, action, x, y }
}

fn tap(ui: &mut Ui, c: &mut Canvas, p: (i32, i32)) -> Effect {
    ui.handle(c, touch(0, TouchAction::Down, p));
    ui.handle(c, touch(0, TouchAction::Up, p))
}

fn key(k: Key) -> Input {
    Input::Key { key: k, down: true }
}

/// Bounding box of the pixels that differ between two same-size canvases.
fn changed_bbox(a: &Canvas, b: &Canvas) -> Rect {
    let mut bbox = Rect::default();
    for y in 0..a.height() {
        for x in 0..a.width() {
            if a.get(x, y) != b.get(x, y) {
                bbox = bbox.union(&Rect::new(x, y, 1, 1));
            }
        }
    }
    bbox
}

fn clone(c: &Canvas) -> Canvas {
    let mut n = Canvas::new(c.width() as u32, c.height() as u32);
    for y in 0..c.height() {
        for x in 0..c.width() {
            n.blend_pixel(x, y, c.get(x, y).unwrap(), 255);
        }
    }
    n
}

#[test]
fn tapping_icons_opens_pages_and_back_home_return() {
    let (mut ui, mut c) = ui(720, 1280);
    for (app, name) in [
        (App::Info, "info"),
        (App::Paint, "paint"),
        (App::Clock, "clock"),
    ] {
        let centre = ui.layout().icon(app).unwrap().center();
        assert_eq!(
            tap(&mut ui, &mut c, centre),
            Effect::Screen(Screen::App(app))
        );
        assert_eq!(ui.screen().name(), name);
        assert_eq!(
            c.take_damage(),
            vec![c.bounds()],
            "opening a page redraws everything"
        );
        let back = if app == App::Clock {
            Key::Home
        } else {
            Key::Back
        };
        assert_eq!(ui.handle(&mut c, key(back)), Effect::Screen(Screen::Home));
    }
    // Inert icons and empty wallpaper do nothing.
    let camera = ui.layout().icon(App::Camera).unwrap().center();
    assert_eq!(tap(&mut ui, &mut c, camera), Effect::None);
    assert_eq!(tap(&mut ui, &mut c, (3, 300)), Effect::None);
    // BACK at home does nothing; a drag from one icon to another is not a tap.
    c.take_damage();
    assert_eq!(ui.handle(&mut c, key(Key::Back)), Effect::None);
    assert!(c.take_damage().is_empty());
    let info = ui.layout().icon(App::Info).unwrap().center();
    ui.handle(&mut c, touch(0, TouchAction::Down, info));
    assert_eq!(
        ui.handle(&mut c, touch(0, TouchAction::Up, camera)),
        Effect::None
    );
}

#[test]
fn title_bar_back_arrow_goes_home_and_appswitch_toggles() {
    let (mut ui, mut c) = ui(720, 1280);
    let info = ui.layout().icon(App::Info).unwrap().center();
    tap(&mut ui, &mut c, info);
    let back = ui.layout().back_button.center();
    assert_eq!(tap(&mut ui, &mut c, back), Effect::Screen(Screen::Home));
    assert_eq!(
        ui.handle(&mut c, key(Key::AppSwitch)),
        Effect::Screen(Screen::App(App::Info))
    );
    assert_eq!(
        ui.handle(&mut c, key(Key::AppSwitch)),
        Effect::Screen(Screen::Home)
    );
}

#[test]
fn paint_stroke_damage_covers_exactly_the_changed_pixels() {
    let (mut ui, mut c) = ui(720, 1280);
    let p = ui.layout().icon(App::Paint).unwrap().center();
    tap(&mut ui, &mut c, p);
    c.take_damage();
    let before = clone(&c);
    ui.handle(&mut c, touch(0, TouchAction::Down, (100, 400)));
    ui.handle(&mut c, touch(0, TouchAction::Move, (180, 450)));
    let damage = c.take_damage();
    assert_eq!(damage.len(), 1, "one stroke, one rect: {damage:?}");
    assert_eq!(damage[0], changed_bbox(&before, &c));
    assert!(
        damage[0].w < 120 && damage[0].h < 80,
        "stroke damage is small: {damage:?}"
    );
    assert_eq!(c.get(140, 425), Some(SLOT_COLORS[0]));
}

#[test]
fn two_fingers_leave_two_colours_and_strokes_stay_below_title() {
    let (mut ui, mut c) = ui(720, 1280);
    let p = ui.layout().icon(App::Paint).unwrap().center();
    tap(&mut ui, &mut c, p);
    for (slot, x) in [(0u8, 200), (1u8, 500)] {
        ui.handle(&mut c, touch(slot, TouchAction::Down, (x, 500)));
    }
    for (slot, x) in [(0u8, 200), (1u8, 500)] {
        ui.handle(&mut c, touch(slot, TouchAction::Move, (x, 700)));
    }
    assert_eq!(c.get(200, 600), Some(SLOT_COLORS[0]));
    assert_eq!(c.get(500, 600), Some(SLOT_COLORS[1]));
    assert_eq!(c.get(350, 600), Some(0xffffff));
    // A stroke dragged up into the title bar is clipped to the sheet.
    let title = ui.layout().title_bar;
    ui.handle(&mut c, touch(0, TouchAction::Move, (200, title.y + 2)));
    assert_eq!(c.get(200, title.bottom() - 1), Some(App::Paint.color()));
    // Clear wipes the sheet.
    let p = ui.layout().clear_button.center();
    tap(&mut ui, &mut c, p);
    assert_eq!(c.get(500, 600), Some(0xffffff));
}

#[test]
fn clock_tick_redraws_only_the_status_bar_at_home() {
    let (mut ui, mut c) = ui(720, 1280);
    assert!(!ui.set_time(&mut c, WallTime::parse_hhmm("12:34").unwrap()));
    assert!(c.take_damage().is_empty(), "same minute: nothing drawn");
    let before = clone(&c);
    assert!(ui.set_time(&mut c, WallTime::parse_hhmm("12:35").unwrap()));
    let status = ui.layout().status_bar;
    assert_eq!(c.take_damage(), vec![status]);
    let changed = changed_bbox(&before, &c);
    assert!(!changed.is_empty() && status.intersect(&changed) == changed);
}

#[test]
fn power_key_blanks_and_restores_and_ignores_touches_while_off() {
    let (mut ui, mut c) = ui(720, 1280);
    let p = ui.layout().icon(App::Paint).unwrap().center();
    tap(&mut ui, &mut c, p);
    ui.handle(&mut c, touch(0, TouchAction::Down, (300, 600)));
    c.take_damage();
    assert_eq!(ui.handle(&mut c, key(Key::Power)), Effect::Power(false));
    ui.handle(&mut c, touch(1, TouchAction::Down, (500, 600)));
    assert_eq!(
        ui.handle(&mut c, key(Key::Back)),
        Effect::None,
        "keys other than POWER do nothing while off"
    );
    assert!(!ui.set_time(&mut c, WallTime::parse_hhmm("13:00").unwrap()));
    assert!(
        c.take_damage().is_empty(),
        "nothing drawn while the screen is off"
    );
    let before = clone(&c);
    assert_eq!(ui.handle(&mut c, key(Key::Power)), Effect::Power(true));
    assert_eq!(
        c.take_damage(),
        vec![c.bounds()],
        "the whole page goes back to the scanout"
    );
    assert_eq!(ui.screen(), Screen::App(App::Paint));
    assert_eq!(
        c.get(300, 600),
        Some(SLOT_COLORS[0]),
        "strokes survive power off/on"
    );
    assert_eq!(
        c.get(500, 600),
        Some(0xffffff),
        "touches while off drew nothing"
    );
    let changed = changed_bbox(&before, &c);
    assert!(
        ui.layout().status_bar.intersect(&changed) == changed,
        "only the clock was redrawn"
    );
}

#[test]
fn volume_keys_redraw_the_status_bar_only() {
    let (mut ui, mut c) = ui(720, 1280);
    assert_eq!(ui.handle(&mut c, key(Key::VolumeUp)), Effect::None);
    assert_eq!(c.take_damage(), vec![ui.layout().status_bar]);
}

#[test]
fn home_screen_has_icon_colours_and_labels_at_every_size() {
    for (w, h) in [(720, 1280), (240, 320), (1080, 1920), (1280, 720)] {
        let (ui, c) = ui(w, h);
        for (app, r) in &ui.layout().icons {
            let (x, y) = r.center();
            // The icon's colour is present near the centre (the initial letter covers the middle).
            let found =
                (0..r.h / 2).any(|d| c.get(x + r.w / 3, y + d - r.h / 4) == Some(app.color()));
            assert!(found, "{app:?} colour missing at {w}x{h}");
        }
        let info = ui.layout().icon(App::Info).unwrap();
        let label = ui.layout().label_rect(info);
        let white = c
            .region(label)
            .iter()
            .filter(|&&p| (0..3).all(|i| (p >> (8 * i)) & 0xff > 0xc0))
            .count();
        assert!(white > 5, "label pixels missing at {w}x{h}");
    }
}

#[test]
fn info_page_shows_values() {
    let (mut ui, mut c) = ui(720, 1280);
    let p = ui.layout().icon(App::Info).unwrap().center();
    tap(&mut ui, &mut c, p);
    let dark = c
        .region(ui.layout().content)
        .iter()
        .filter(|&&p| p == 0x212121)
        .count();
    assert!(dark > 100, "info values drawn ({dark} px)");
}
