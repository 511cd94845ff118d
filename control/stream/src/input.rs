//! Browser input messages (data channel JSON, screen-size independent), parsed and checked once
//! where the data channel delivers them ([`BrowserInput`]), and the VMM's `PUT /input` body in
//! screen pixels they become ([`VmmInput`]), serialized only at the VMM API call.
//!
//! Browser format (one JSON object per data-channel message):
//! - `{"type":"touch","pointers":[{"id":0,"x":0.25,"y":0.5,"down":true}, ...]}`: contacts
//!   (slot ids 0..=9, the page maps pointer ids to slots) with coordinates normalised to 0..=1
//!   over the video; `down:false` lifts the contact.
//! - `{"type":"key","key":"HOME","down":true}`: a key by API name (HOME, BACK, APPSWITCH, A-Z...).
//!
//! Everything here comes from the browser and is hostile: non-finite or out-of-range numbers,
//! too many contacts, odd key names are refused with a reason; nothing is ever sent half-made.

use std::str::FromStr;

use cloudphone_display::input::TOUCH_SLOTS;
use serde::{Deserialize, Serialize};

/// Longest key name we forward (the VMM's names are short).
const MAX_KEY_NAME: usize = 24;
/// How far past the video edge a coordinate may lie (pointer capture reports positions just
/// outside it); such coordinates are clamped onto the screen.
const EDGE_SLACK: f64 = 0.05;

/// Why a data-channel message is not an input event the phone can take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// Not JSON of either input shape (unknown type, missing or extra fields).
    #[error("not an input message: {0}")]
    NotInput(String),
    /// A touch with no contacts, or more than the touchscreen has slots.
    #[error("{0} contacts; send 1..={TOUCH_SLOTS}")]
    Contacts(usize),
    /// A contact id that is not one of the touchscreen's slots.
    #[error("contact id {0} is not a slot 0..{TOUCH_SLOTS}")]
    ContactId(u32),
    /// A coordinate that is not a number near 0..=1.
    #[error("coordinate {0} is outside 0..1")]
    Coordinate(f64),
    /// A key name with characters no VMM key name has (it would be spliced into JSON).
    #[error("key name {0:?} is not a key name (A-Z, 0-9, _)")]
    KeyName(String),
}

/// One checked browser input message: what a viewer session hands the hub, which only needs
/// the screen size to turn it into a [`VmmInput`]. Built only by parsing ([`FromStr`]), so a
/// value of this type is always valid.
#[derive(Debug, Clone, PartialEq)]
pub struct BrowserInput(Message);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Message {
    Touch { pointers: Vec<Pointer> },
    Key { key: String, down: bool },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pointer {
    id: u32,
    x: f64,
    y: f64,
    down: bool,
}

impl FromStr for BrowserInput {
    type Err = InputError;

    /// Parse and check one data-channel text message.
    fn from_str(message: &str) -> Result<Self, InputError> {
        let parsed: Message =
            serde_json::from_str(message).map_err(|e| InputError::NotInput(e.to_string()))?;
        match &parsed {
            Message::Touch { pointers } => {
                if pointers.is_empty() || pointers.len() > TOUCH_SLOTS as usize {
                    return Err(InputError::Contacts(pointers.len()));
                }
                for p in pointers {
                    if p.id >= TOUCH_SLOTS {
                        return Err(InputError::ContactId(p.id));
                    }
                    for v in [p.x, p.y] {
                        if !v.is_finite() || !(-EDGE_SLACK..=1.0 + EDGE_SLACK).contains(&v) {
                            return Err(InputError::Coordinate(v));
                        }
                    }
                }
            }
            Message::Key { key, .. } => {
                let plain = !key.is_empty()
                    && key.len() <= MAX_KEY_NAME
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !plain {
                    return Err(InputError::KeyName(key.clone()));
                }
            }
        }
        Ok(Self(parsed))
    }
}

impl BrowserInput {
    /// The `PUT /input` body for a `width`×`height` screen (coordinates in pixels
    /// 0..size-1).
    pub fn to_screen(&self, width: u32, height: u32) -> VmmInput {
        match &self.0 {
            Message::Touch { pointers } => VmmInput::Touch {
                touch: pointers
                    .iter()
                    .map(|p| Contact {
                        id: p.id,
                        x: to_pixel(p.x, width),
                        y: to_pixel(p.y, height),
                        down: p.down,
                    })
                    .collect(),
            },
            Message::Key { key, down } => VmmInput::Key {
                key: key.clone(),
                down: *down,
            },
        }
    }
}

/// A checked normalised coordinate, clamped onto the screen, in pixels 0..size-1.
fn to_pixel(v: f64, size: u32) -> u32 {
    let max = size.saturating_sub(1) as f64;
    (v.clamp(0.0, 1.0) * max).round() as u32
}

/// The VMM's `PUT /input` body in screen pixels, kept typed through the hub and serialized
/// (`{"touch":[...]}` or `{"key":..,"down":..}`) only at the API call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum VmmInput {
    /// Touch contacts (all of one frame).
    Touch {
        /// The contacts, each down at a pixel or lifted.
        touch: Vec<Contact>,
    },
    /// A key pressed or released, by API name.
    Key {
        /// The key's API name (HOME, BACK, A-Z...).
        key: String,
        /// Pressed (true) or released.
        down: bool,
    },
}

/// One touch contact in screen pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Contact {
    /// The touchscreen slot (0..TOUCH_SLOTS).
    pub id: u32,
    /// Column in pixels.
    pub x: u32,
    /// Row in pixels.
    pub y: u32,
    /// Touching (true) or lifted.
    pub down: bool,
}

impl VmmInput {
    /// A press (a contact or key going down): presses make the phone redraw, releases usually
    /// do not, so only presses start the touch-to-redraw timer.
    pub fn is_press(&self) -> bool {
        match self {
            VmmInput::Touch { touch } => touch.iter().any(|c| c.down),
            VmmInput::Key { down, .. } => *down,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// `message` for a `width`×`height` screen, as the JSON the VMM receives.
    fn translate(message: &str, width: u32, height: u32) -> Result<serde_json::Value, InputError> {
        let input: BrowserInput = message.parse()?;
        Ok(serde_json::to_value(input.to_screen(width, height)).unwrap())
    }

    #[test]
    fn touches_become_pixels_and_keys_pass_through() {
        let body = translate(
            r#"{"type":"touch","pointers":[{"id":0,"x":0.5,"y":0,"down":true},{"id":1,"x":1,"y":1.01,"down":false}]}"#,
            721,
            1281,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"touch":[{"id":0,"x":360,"y":0,"down":true},{"id":1,"x":720,"y":1280,"down":false}]})
        );
        let key = translate(r#"{"type":"key","key":"HOME","down":false}"#, 10, 10).unwrap();
        assert_eq!(key, json!({"key":"HOME","down":false}));
    }

    #[test]
    fn only_presses_are_presses() {
        let input = |m: &str| m.parse::<BrowserInput>().unwrap().to_screen(10, 10);
        let lift = r#"{"type":"touch","pointers":[{"id":0,"x":0,"y":0,"down":false}]}"#;
        let one_down = r#"{"type":"touch","pointers":[{"id":0,"x":0,"y":0,"down":false},{"id":1,"x":0,"y":0,"down":true}]}"#;
        assert!(!input(lift).is_press());
        assert!(input(one_down).is_press());
        assert!(input(r#"{"type":"key","key":"A","down":true}"#).is_press());
        assert!(!input(r#"{"type":"key","key":"A","down":false}"#).is_press());
    }

    #[test]
    fn hostile_messages_are_refused() {
        for bad in [
            "",
            "null",
            r#"{"type":"touch","pointers":[]}"#,
            r#"{"type":"touch","pointers":[{"id":10,"x":0,"y":0,"down":true}]}"#,
            r#"{"type":"touch","pointers":[{"id":0,"x":2,"y":0,"down":true}]}"#,
            r#"{"type":"touch","pointers":[{"id":0,"x":-1e308,"y":0,"down":true}]}"#,
            r#"{"type":"key","key":"HOME\"}","down":true}"#,
            r#"{"type":"key","key":"","down":true}"#,
            r#"{"type":"key","key":"HOME","down":true,"extra":1}"#,
            r#"{"type":"mouse"}"#,
        ] {
            assert!(bad.parse::<BrowserInput>().is_err(), "{bad:?}");
        }
        let eleven: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"id":{i},"x":0,"y":0,"down":true}}"#))
            .collect();
        let msg = format!(r#"{{"type":"touch","pointers":[{}]}}"#, eleven.join(","));
        assert_eq!(msg.parse::<BrowserInput>(), Err(InputError::Contacts(11)));
    }

    proptest! {
        #[test]
        fn any_accepted_touch_lies_on_screen(x in -2.0f64..2.0, y in -2.0f64..2.0, w in 1u32..4000, h in 1u32..4000) {
            let msg = format!(r#"{{"type":"touch","pointers":[{{"id":3,"x":{x},"y":{y},"down":true}}]}}"#);
            if let Ok(v) = translate(&msg, w, h) {
                prop_assert!(v["touch"][0]["x"].as_u64().unwrap() < w as u64);
                prop_assert!(v["touch"][0]["y"].as_u64().unwrap() < h as u64);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = s.parse::<BrowserInput>();
        }
    }

    #[test]
    fn fuzz_case_count() {
        eprintln!(
            "fuzz input-translate: {} cases x2",
            ProptestConfig::default().cases
        );
    }
}
