//! Browser input messages (data channel JSON, screen-size independent) translated into the VMM's
//! `PUT /input` bodies in screen pixels.
//!
//! Browser format (one JSON object per data-channel message):
//! - `{"type":"touch","pointers":[{"id":0,"x":0.25,"y":0.5,"down":true}, ...]}`: contacts
//!   (slot ids 0..=9, the page maps pointer ids to slots) with coordinates normalised to 0..=1
//!   over the video; `down:false` lifts the contact.
//! - `{"type":"key","key":"HOME","down":true}`: a key by API name (HOME, BACK, APPSWITCH, A-Z...).
//!
//! Everything here comes from the browser and is hostile: non-finite or out-of-range numbers,
//! too many contacts, odd key names are refused with a reason; nothing is ever sent half-made.

use serde::Deserialize;
use serde_json::json;

/// Touch slots the virtio touchscreen has (ids 0..=9).
pub const MAX_CONTACTS: usize = 10;
/// Longest key name we forward (the VMM's names are short).
const MAX_KEY_NAME: usize = 24;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum BrowserInput {
    Touch { pointers: Vec<Pointer> },
    Key { key: String, down: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pointer {
    id: u32,
    x: f64,
    y: f64,
    down: bool,
}

/// Translate one browser message into a `PUT /input` body for a `width`×`height` screen.
pub fn translate(message: &str, width: u32, height: u32) -> Result<String, String> {
    let input: BrowserInput =
        serde_json::from_str(message).map_err(|e| format!("not an input message: {e}"))?;
    match input {
        BrowserInput::Touch { pointers } => {
            if pointers.is_empty() || pointers.len() > MAX_CONTACTS {
                return Err(format!(
                    "{} contacts; send 1..={MAX_CONTACTS}",
                    pointers.len()
                ));
            }
            let touch = pointers
                .iter()
                .map(|p| {
                    if p.id as usize >= MAX_CONTACTS {
                        return Err(format!("contact id {} is not a slot 0..=9", p.id));
                    }
                    Ok(json!({
                        "id": p.id,
                        "x": to_pixel(p.x, width)?,
                        "y": to_pixel(p.y, height)?,
                        "down": p.down,
                    }))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(json!({ "touch": touch }).to_string())
        }
        BrowserInput::Key { key, down } => {
            let plain = !key.is_empty()
                && key.len() <= MAX_KEY_NAME
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !plain {
                return Err(format!("key name {key:?} is not a key name (A-Z, 0-9, _)"));
            }
            Ok(json!({ "key": key, "down": down }).to_string())
        }
    }
}

/// A normalised coordinate (0..=1, slightly outside is clamped: pointer capture can report
/// positions just past the video edge) in pixels 0..size-1.
fn to_pixel(v: f64, size: u32) -> Result<u32, String> {
    if !v.is_finite() || !(-0.05..=1.05).contains(&v) {
        return Err(format!("coordinate {v} is outside 0..1"));
    }
    let max = size.saturating_sub(1) as f64;
    Ok((v.clamp(0.0, 1.0) * max).round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn touches_become_pixels_and_keys_pass_through() {
        let body = translate(
            r#"{"type":"touch","pointers":[{"id":0,"x":0.5,"y":0,"down":true},{"id":1,"x":1,"y":1.01,"down":false}]}"#,
            721,
            1281,
        )
        .unwrap();
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(
            parse(&body),
            json!({"touch":[{"id":0,"x":360,"y":0,"down":true},{"id":1,"x":720,"y":1280,"down":false}]})
        );
        let key = translate(r#"{"type":"key","key":"HOME","down":false}"#, 10, 10).unwrap();
        assert_eq!(parse(&key), json!({"key":"HOME","down":false}));
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
            assert!(translate(bad, 720, 1280).is_err(), "{bad:?}");
        }
        let eleven: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"id":{i},"x":0,"y":0,"down":true}}"#))
            .collect();
        let msg = format!(r#"{{"type":"touch","pointers":[{}]}}"#, eleven.join(","));
        assert!(translate(&msg, 720, 1280).is_err());
    }

    proptest! {
        #[test]
        fn any_accepted_touch_lies_on_screen(x in -2.0f64..2.0, y in -2.0f64..2.0, w in 1u32..4000, h in 1u32..4000) {
            let msg = format!(r#"{{"type":"touch","pointers":[{{"id":3,"x":{x},"y":{y},"down":true}}]}}"#);
            if let Ok(body) = translate(&msg, w, h) {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                prop_assert!(v["touch"][0]["x"].as_u64().unwrap() < w as u64);
                prop_assert!(v["touch"][0]["y"].as_u64().unwrap() < h as u64);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = translate(&s, 720, 1280);
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
