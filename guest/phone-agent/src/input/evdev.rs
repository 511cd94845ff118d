//! Decoding raw evdev `input_event`s into touches and phone keys. Pure logic (no device I/O)
//! so multitouch protocol B handling is tested on the host from byte sequences.

/// Size of `struct input_event` on x86_64 (timeval 16 bytes + type, code, value).
pub const EVENT_SIZE: usize = 24;
/// Touch slots tracked; virtio-input touchscreens report 10. Higher slot numbers from a
/// device are ignored rather than trusted as an index.
pub const MAX_SLOTS: usize = 10;

pub const EV_SYN: u16 = 0x00;
pub const EV_KEY: u16 = 0x01;
pub const EV_ABS: u16 = 0x03;
pub const SYN_REPORT: u16 = 0;
pub const SYN_DROPPED: u16 = 3;
pub const ABS_X: u16 = 0x00;
pub const ABS_Y: u16 = 0x01;
pub const BTN_LEFT: u16 = 0x110;
pub const BTN_TOUCH: u16 = 0x14a;
pub const ABS_MT_SLOT: u16 = 0x2f;
pub const ABS_MT_POSITION_X: u16 = 0x35;
pub const ABS_MT_POSITION_Y: u16 = 0x36;
pub const ABS_MT_TRACKING_ID: u16 = 0x39;
pub const KEY_HOME: u16 = 102;
pub const KEY_VOLUMEDOWN: u16 = 114;
pub const KEY_VOLUMEUP: u16 = 115;
pub const KEY_POWER: u16 = 116;
pub const KEY_BACK: u16 = 158;
pub const KEY_HOMEPAGE: u16 = 172;
pub const KEY_APPSELECT: u16 = 0x244;

/// One `struct input_event`, timestamp in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    pub time_us: u64,
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl RawEvent {
    /// Decodes one 24-byte `input_event` (native endianness, as read from the device).
    pub fn from_bytes(b: &[u8; EVENT_SIZE]) -> Self {
        let i64_at = |o: usize| i64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let (sec, usec) = (i64_at(0), i64_at(8));
        let time_us = (sec.max(0) as u64)
            .saturating_mul(1_000_000)
            .saturating_add(usec.clamp(0, 999_999) as u64);
        RawEvent {
            time_us,
            kind: u16::from_ne_bytes([b[16], b[17]]),
            code: u16::from_ne_bytes([b[18], b[19]]),
            value: i32::from_ne_bytes(b[20..24].try_into().expect("4 bytes")),
        }
    }

    /// Encodes the event the way the kernel does (used by tests to build byte streams).
    pub fn to_bytes(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[0..8].copy_from_slice(&((self.time_us / 1_000_000) as i64).to_ne_bytes());
        b[8..16].copy_from_slice(&((self.time_us % 1_000_000) as i64).to_ne_bytes());
        b[16..18].copy_from_slice(&self.kind.to_ne_bytes());
        b[18..20].copy_from_slice(&self.code.to_ne_bytes());
        b[20..24].copy_from_slice(&self.value.to_ne_bytes());
        b
    }
}

/// Splits a read buffer into events; a trailing partial event is ignored (evdev never
/// returns one, but the buffer length is not trusted).
pub fn parse_events(bytes: &[u8]) -> impl Iterator<Item = RawEvent> + '_ {
    bytes
        .chunks_exact(EVENT_SIZE)
        .map(|c| RawEvent::from_bytes(c.try_into().expect("exact chunk")))
}

/// The phone keys the agent reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Home,
    Back,
    AppSwitch,
    Power,
    VolumeUp,
    VolumeDown,
}

impl Key {
    /// Maps a Linux key code; KEY_HOME (the PC Home key) also means HOME.
    pub fn from_code(code: u16) -> Option<Key> {
        Some(match code {
            KEY_HOMEPAGE | KEY_HOME => Key::Home,
            KEY_BACK => Key::Back,
            KEY_APPSELECT => Key::AppSwitch,
            KEY_POWER => Key::Power,
            KEY_VOLUMEUP => Key::VolumeUp,
            KEY_VOLUMEDOWN => Key::VolumeDown,
            _ => return None,
        })
    }

    /// The name used in report lines (and in the VMM's input API).
    pub fn name(self) -> &'static str {
        match self {
            Key::Home => "HOME",
            Key::Back => "BACK",
            Key::AppSwitch => "APPSWITCH",
            Key::Power => "POWER",
            Key::VolumeUp => "VOLUMEUP",
            Key::VolumeDown => "VOLUMEDOWN",
        }
    }
}

/// What happened to one finger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchAction {
    Down,
    Move,
    Up,
}

/// An input the UI handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Touch {
        slot: u8,
        action: TouchAction,
        x: i32,
        y: i32,
    },
    Key {
        key: Key,
        down: bool,
    },
}

/// Maps a device axis range onto screen pixels `0..size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    pub min: i32,
    pub max: i32,
    pub size: i32,
}

impl Axis {
    /// An axis that already reports screen pixels.
    pub fn identity(size: i32) -> Self {
        Axis {
            min: 0,
            max: size - 1,
            size,
        }
    }

    /// Device value to a pixel, clamped on screen whatever the device sends.
    pub fn map(&self, v: i32) -> i32 {
        let span = i64::from(self.max) - i64::from(self.min);
        let px = if span <= 0 {
            i64::from(v)
        } else {
            (i64::from(v) - i64::from(self.min)) * i64::from(self.size - 1) / span
        };
        px.clamp(0, i64::from(self.size.max(1) - 1)) as i32
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// The finger is down as far as the UI knows.
    active: bool,
    x: i32,
    y: i32,
    /// Changes seen since the last SYN_REPORT.
    new_contact: bool,
    lifted: bool,
    moved: bool,
}

/// How a device reports contacts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchProtocol {
    /// Multitouch protocol B (slots); single-touch ABS_X/BTN_TOUCH duplicates are ignored.
    MultitouchB,
    /// Absolute single pointer (ABS_X/ABS_Y + BTN_TOUCH or BTN_LEFT, e.g. a virtio tablet),
    /// reported as slot 0.
    SingleTouch,
}

/// Multitouch protocol B + key decoder: feed raw events, get inputs at each SYN_REPORT.
pub struct Decoder {
    protocol: TouchProtocol,
    slots: [Slot; MAX_SLOTS],
    /// Current slot, or None when the device selected one we do not track.
    slot: Option<usize>,
    keys: Vec<Input>,
    /// After SYN_DROPPED, everything up to the next SYN_REPORT is discarded.
    dropping: bool,
    x: Axis,
    y: Axis,
}

/// Key events kept per frame; a device flooding keys in one frame loses the excess.
const MAX_KEYS_PER_FRAME: usize = 16;

impl Decoder {
    /// A decoder for `protocol` mapping the touch axes through `x` and `y`.
    pub fn new(protocol: TouchProtocol, x: Axis, y: Axis) -> Self {
        Decoder {
            protocol,
            slots: [Slot::default(); MAX_SLOTS],
            slot: Some(0),
            keys: Vec::new(),
            dropping: false,
            x,
            y,
        }
    }

    /// Feeds one event; returns the frame's inputs when it completes a frame (SYN_REPORT).
    pub fn feed(&mut self, ev: RawEvent) -> Vec<Input> {
        if ev.kind == EV_SYN && ev.code == SYN_DROPPED {
            self.dropping = true;
            return Vec::new();
        }
        if ev.kind == EV_SYN && ev.code == SYN_REPORT {
            return if std::mem::take(&mut self.dropping) {
                self.lift_all()
            } else {
                self.finish_frame()
            };
        }
        if self.dropping {
            return Vec::new();
        }
        if self.protocol == TouchProtocol::SingleTouch {
            self.feed_single(ev);
        }
        match (ev.kind, ev.code) {
            _ if self.protocol == TouchProtocol::SingleTouch => {}
            (EV_ABS, ABS_MT_SLOT) => {
                self.slot = usize::try_from(ev.value).ok().filter(|&s| s < MAX_SLOTS);
            }
            (EV_ABS, ABS_MT_TRACKING_ID) => {
                if let Some(s) = self.current() {
                    if ev.value < 0 {
                        s.lifted = true;
                    } else {
                        s.new_contact = true;
                        s.lifted = false;
                    }
                }
            }
            (EV_ABS, ABS_MT_POSITION_X) => {
                let x = self.x.map(ev.value);
                if let Some(s) = self.current() {
                    s.x = x;
                    s.moved = true;
                }
            }
            (EV_ABS, ABS_MT_POSITION_Y) => {
                let y = self.y.map(ev.value);
                if let Some(s) = self.current() {
                    s.y = y;
                    s.moved = true;
                }
            }
            (EV_KEY, code) if ev.value != 2 && self.keys.len() < MAX_KEYS_PER_FRAME => {
                if let Some(key) = Key::from_code(code) {
                    self.keys.push(Input::Key {
                        key,
                        down: ev.value != 0,
                    });
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// Single-pointer events land in slot 0.
    fn feed_single(&mut self, ev: RawEvent) {
        let s = &mut self.slots[0];
        match (ev.kind, ev.code) {
            (EV_ABS, ABS_X) => {
                s.x = self.x.map(ev.value);
                s.moved = true;
            }
            (EV_ABS, ABS_Y) => {
                s.y = self.y.map(ev.value);
                s.moved = true;
            }
            (EV_KEY, BTN_TOUCH | BTN_LEFT) if ev.value == 1 => {
                s.new_contact = !s.active;
                s.lifted = false;
            }
            (EV_KEY, BTN_TOUCH | BTN_LEFT) if ev.value == 0 => s.lifted = true,
            (EV_KEY, code) if self.keys.len() < MAX_KEYS_PER_FRAME && ev.value != 2 => {
                if let Some(key) = Key::from_code(code) {
                    self.keys.push(Input::Key {
                        key,
                        down: ev.value != 0,
                    });
                }
            }
            _ => {}
        }
    }

    fn current(&mut self) -> Option<&mut Slot> {
        self.slot.map(|i| &mut self.slots[i])
    }

    fn finish_frame(&mut self) -> Vec<Input> {
        let mut out = std::mem::take(&mut self.keys);
        for (i, s) in self.slots.iter_mut().enumerate() {
            let slot = i as u8;
            let (x, y) = (s.x, s.y);
            if s.new_contact && s.active {
                // A new tracking id without a lift in between: the old finger ended.
                out.push(Input::Touch {
                    slot,
                    action: TouchAction::Up,
                    x,
                    y,
                });
                s.active = false;
            }
            if s.lifted && s.active {
                out.push(Input::Touch {
                    slot,
                    action: TouchAction::Up,
                    x,
                    y,
                });
                s.active = false;
            } else if s.new_contact && !s.lifted {
                out.push(Input::Touch {
                    slot,
                    action: TouchAction::Down,
                    x,
                    y,
                });
                s.active = true;
            } else if s.moved && s.active {
                out.push(Input::Touch {
                    slot,
                    action: TouchAction::Move,
                    x,
                    y,
                });
            }
            s.new_contact = false;
            s.lifted = false;
            s.moved = false;
        }
        out
    }

    /// Resynchronises after dropped events: every finger the UI thinks is down is lifted.
    fn lift_all(&mut self) -> Vec<Input> {
        self.keys.clear();
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.active {
                out.push(Input::Touch {
                    slot: i as u8,
                    action: TouchAction::Up,
                    x: s.x,
                    y: s.y,
                });
            }
            *s = Slot {
                x: s.x,
                y: s.y,
                ..Slot::default()
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(kind: u16, code: u16, value: i32) -> RawEvent {
        RawEvent {
            time_us: 1_000_123,
            kind,
            code,
            value,
        }
    }
    fn abs(code: u16, v: i32) -> RawEvent {
        ev(EV_ABS, code, v)
    }
    fn syn() -> RawEvent {
        ev(EV_SYN, SYN_REPORT, 0)
    }
    /// Feeds the events through their byte encoding, as read() would return them.
    fn run(d: &mut Decoder, events: &[RawEvent]) -> Vec<Input> {
        let bytes: Vec<u8> = events.iter().flat_map(|e| e.to_bytes()).collect();
        parse_events(&bytes).flat_map(|e| d.feed(e)).collect()
    }
    fn decoder() -> Decoder {
        Decoder::new(
            TouchProtocol::MultitouchB,
            Axis::identity(720),
            Axis::identity(1280),
        )
    }
    fn t(slot: u8, action: TouchAction, x: i32, y: i32) -> Input {
        Input::Touch { slot, action, x, y }
    }

    #[test]
    fn bytes_round_trip() {
        let e = RawEvent {
            time_us: 12_345_678,
            kind: EV_ABS,
            code: ABS_MT_POSITION_X,
            value: -7,
        };
        assert_eq!(RawEvent::from_bytes(&e.to_bytes()), e);
        assert_eq!(parse_events(&[0u8; EVENT_SIZE * 2 + 5]).count(), 2);
    }

    #[test]
    fn one_finger_down_move_up() {
        let mut d = decoder();
        let out = run(
            &mut d,
            &[
                abs(ABS_MT_SLOT, 0),
                abs(ABS_MT_TRACKING_ID, 5),
                abs(ABS_MT_POSITION_X, 10),
                abs(ABS_MT_POSITION_Y, 20),
                syn(),
            ],
        );
        assert_eq!(out, vec![t(0, TouchAction::Down, 10, 20)]);
        // Protocol B only sends what changed: Y alone.
        assert_eq!(
            run(&mut d, &[abs(ABS_MT_POSITION_Y, 25), syn()]),
            vec![t(0, TouchAction::Move, 10, 25)]
        );
        assert_eq!(
            run(&mut d, &[abs(ABS_MT_TRACKING_ID, -1), syn()]),
            vec![t(0, TouchAction::Up, 10, 25)]
        );
        assert!(run(&mut d, &[syn()]).is_empty());
    }

    #[test]
    fn two_fingers_and_a_lifted_slot() {
        let mut d = decoder();
        let out = run(
            &mut d,
            &[
                abs(ABS_MT_SLOT, 0),
                abs(ABS_MT_TRACKING_ID, 1),
                abs(ABS_MT_POSITION_X, 100),
                abs(ABS_MT_POSITION_Y, 200),
                abs(ABS_MT_SLOT, 1),
                abs(ABS_MT_TRACKING_ID, 2),
                abs(ABS_MT_POSITION_X, 300),
                abs(ABS_MT_POSITION_Y, 400),
                syn(),
            ],
        );
        assert_eq!(
            out,
            vec![
                t(0, TouchAction::Down, 100, 200),
                t(1, TouchAction::Down, 300, 400)
            ]
        );
        // Both move; slot stays 1 until changed.
        let out = run(
            &mut d,
            &[
                abs(ABS_MT_POSITION_X, 310),
                abs(ABS_MT_SLOT, 0),
                abs(ABS_MT_POSITION_X, 110),
                syn(),
            ],
        );
        assert_eq!(
            out,
            vec![
                t(0, TouchAction::Move, 110, 200),
                t(1, TouchAction::Move, 310, 400)
            ]
        );
        // Lift finger 0; finger 1 keeps moving.
        let out = run(
            &mut d,
            &[
                abs(ABS_MT_TRACKING_ID, -1),
                abs(ABS_MT_SLOT, 1),
                abs(ABS_MT_POSITION_Y, 410),
                syn(),
            ],
        );
        assert_eq!(
            out,
            vec![
                t(0, TouchAction::Up, 110, 200),
                t(1, TouchAction::Move, 310, 410)
            ]
        );
        // Position updates to a lifted slot are not moves.
        assert!(run(
            &mut d,
            &[abs(ABS_MT_SLOT, 0), abs(ABS_MT_POSITION_X, 5), syn()]
        )
        .is_empty());
        // Slot 0 reused by a new finger at the updated spot.
        let out = run(
            &mut d,
            &[abs(ABS_MT_TRACKING_ID, 3), abs(ABS_MT_POSITION_Y, 7), syn()],
        );
        assert_eq!(out, vec![t(0, TouchAction::Down, 5, 7)]);
        // New tracking id on an active slot without a lift: up then down.
        let out = run(
            &mut d,
            &[abs(ABS_MT_SLOT, 1), abs(ABS_MT_TRACKING_ID, 9), syn()],
        );
        assert_eq!(
            out,
            vec![
                t(1, TouchAction::Up, 310, 410),
                t(1, TouchAction::Down, 310, 410)
            ]
        );
    }

    #[test]
    fn keys_in_order_and_repeats_ignored() {
        let mut d = decoder();
        let out = run(
            &mut d,
            &[
                ev(EV_KEY, KEY_HOMEPAGE, 1),
                ev(EV_KEY, KEY_HOMEPAGE, 2),
                ev(EV_KEY, 30, 1),
                syn(),
                ev(EV_KEY, KEY_BACK, 0),
                syn(),
            ],
        );
        assert_eq!(
            out,
            vec![
                Input::Key {
                    key: Key::Home,
                    down: true
                },
                Input::Key {
                    key: Key::Back,
                    down: false
                }
            ]
        );
    }

    #[test]
    fn dropped_events_lift_all_fingers() {
        let mut d = decoder();
        run(
            &mut d,
            &[
                abs(ABS_MT_TRACKING_ID, 1),
                abs(ABS_MT_POSITION_X, 1),
                abs(ABS_MT_POSITION_Y, 2),
                syn(),
            ],
        );
        let out = run(
            &mut d,
            &[
                ev(EV_SYN, SYN_DROPPED, 0),
                abs(ABS_MT_POSITION_X, 50),
                ev(EV_KEY, KEY_BACK, 1),
                syn(),
            ],
        );
        assert_eq!(out, vec![t(0, TouchAction::Up, 1, 2)]);
    }

    #[test]
    fn hostile_slots_and_coordinates() {
        let mut d = decoder();
        let out = run(
            &mut d,
            &[
                abs(ABS_MT_SLOT, 99),
                abs(ABS_MT_TRACKING_ID, 1),
                abs(ABS_MT_SLOT, -4),
                abs(ABS_MT_POSITION_X, 5),
                syn(),
            ],
        );
        assert!(out.is_empty());
        let out = run(
            &mut d,
            &[
                abs(ABS_MT_SLOT, 2),
                abs(ABS_MT_TRACKING_ID, 1),
                abs(ABS_MT_POSITION_X, i32::MAX),
                abs(ABS_MT_POSITION_Y, i32::MIN),
                syn(),
            ],
        );
        assert_eq!(out, vec![t(2, TouchAction::Down, 719, 0)]);
    }

    #[test]
    fn single_touch_tablet_is_slot_zero() {
        let tablet = Axis {
            min: 0,
            max: 32767,
            size: 720,
        };
        let mut d = Decoder::new(
            TouchProtocol::SingleTouch,
            tablet,
            Axis {
                size: 1280,
                ..tablet
            },
        );
        let out = run(
            &mut d,
            &[
                abs(ABS_X, 32767),
                abs(ABS_Y, 0),
                ev(EV_KEY, BTN_LEFT, 1),
                syn(),
            ],
        );
        assert_eq!(out, vec![t(0, TouchAction::Down, 719, 0)]);
        assert_eq!(
            run(&mut d, &[abs(ABS_Y, 32767), syn()]),
            vec![t(0, TouchAction::Move, 719, 1279)]
        );
        // A second press while down is not a new contact; MT codes are ignored here.
        assert!(run(
            &mut d,
            &[ev(EV_KEY, BTN_TOUCH, 1), abs(ABS_MT_TRACKING_ID, -1), syn()]
        )
        .is_empty());
        let out = run(
            &mut d,
            &[ev(EV_KEY, BTN_LEFT, 0), ev(EV_KEY, KEY_BACK, 1), syn()],
        );
        assert_eq!(
            out,
            vec![
                Input::Key {
                    key: Key::Back,
                    down: true
                },
                t(0, TouchAction::Up, 719, 1279)
            ]
        );
        // A multitouch decoder ignores the single-touch duplicates.
        let mut mt = decoder();
        assert!(run(&mut mt, &[abs(ABS_X, 5), ev(EV_KEY, BTN_TOUCH, 1), syn()]).is_empty());
    }

    #[test]
    fn axis_scaling() {
        let a = Axis {
            min: 0,
            max: 32767,
            size: 720,
        };
        assert_eq!(a.map(0), 0);
        assert_eq!(a.map(32767), 719);
        assert_eq!(a.map(16384), 359);
        assert_eq!(
            Axis {
                min: 5,
                max: 5,
                size: 100
            }
            .map(50),
            50
        );
    }

    #[test]
    fn fuzz_decoder_never_panics_and_stays_consistent() {
        let event = (0u16..4, 0u16..0x60, any::<i32>()).prop_map(|(k, c, v)| {
            // Bias towards the codes the decoder understands.
            let code = match k {
                3 => [
                    ABS_MT_SLOT,
                    ABS_MT_TRACKING_ID,
                    ABS_MT_POSITION_X,
                    ABS_MT_POSITION_Y,
                ][(c % 4) as usize],
                _ => c,
            };
            let value = if code == ABS_MT_SLOT {
                v.rem_euclid(12) - 1
            } else {
                v
            };
            RawEvent {
                time_us: 0,
                kind: k,
                code,
                value,
            }
        });
        crate::testutil::fuzz(
            "evdev_decoder",
            proptest::collection::vec(event, 0..200),
            |events| {
                let mut d = decoder();
                let mut down = [false; MAX_SLOTS];
                for e in events {
                    for input in d.feed(e) {
                        if let Input::Touch { slot, action, x, y } = input {
                            prop_assert!((0..720).contains(&x) && (0..1280).contains(&y));
                            let s = &mut down[slot as usize];
                            match action {
                                TouchAction::Down => {
                                    prop_assert!(!*s, "down twice");
                                    *s = true;
                                }
                                TouchAction::Move => prop_assert!(*s, "move while up"),
                                TouchAction::Up => {
                                    prop_assert!(*s, "up while up");
                                    *s = false;
                                }
                            }
                        }
                    }
                }
                Ok(())
            },
        );
    }
}
