//! The `PUT /input` body: `{"touch":[{"id":0,"x":10,"y":20,"down":true}, ...]}` or
//! `{"key":"HOME","down":true}`. Validated completely before anything is injected, so a bad
//! request (API answers 400) never reaches the guest half-applied.

use serde::Deserialize;

use super::config::TOUCH_SLOTS;
use super::evdev::key_code;

/// Largest accepted body; real requests are a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// The screen the touch coordinates refer to (the GPU scanout size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
}

/// One validated input action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputAction {
    /// Contact `id` (0..=9) is down at (x, y), or lifted.
    Touch { id: u32, x: u32, y: u32, down: bool },
    /// A key (Linux key code) pressed or released.
    Key { code: u16, down: bool },
}

/// Why an input request was refused (nothing was injected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input body is not valid: {0} (expected {{\"touch\":[{{\"id\":0,\"x\":..,\"y\":..,\"down\":true}}]}} or {{\"key\":\"HOME\",\"down\":true}})")]
    BadJson(String),
    #[error("input body is {0} bytes; at most {MAX_REQUEST_BYTES} allowed")]
    TooLarge(usize),
    #[error("touch {id} at ({x}, {y}) is outside the {width}x{height} screen")]
    OutOfScreen {
        id: u32,
        x: i64,
        y: i64,
        width: u32,
        height: u32,
    },
    #[error("touch id {0} is out of range: ids are 0..=9 (10 contacts)")]
    BadTouchId(u32),
    #[error("touch id {0} appears twice in one request")]
    DuplicateTouchId(u32),
    #[error("{0} touches in one request; at most 10")]
    TooManyTouches(usize),
    #[error("unknown key '{0}' (try HOME, BACK, APPSWITCH, POWER, VOLUMEUP, VOLUMEDOWN, A-Z, 0-9, ENTER, BACKSPACE, SPACE)")]
    UnknownKey(String),
    #[error("this phone has no {0} device (start the VMM with --input touch,keyboard)")]
    NoDevice(&'static str),
    #[error("the guest is not reading input events fast enough; retry later")]
    QueueFull,
}

impl InputError {
    /// HTTP status for the API: 400 for a bad request, 409 for a missing device, 503 when the
    /// guest is backlogged.
    pub fn http_status(&self) -> u16 {
        match self {
            InputError::NoDevice(_) => 409,
            InputError::QueueFull => 503,
            _ => 400,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    touch: Option<Vec<TouchPoint>>,
    key: Option<String>,
    down: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TouchPoint {
    id: u32,
    x: i64,
    y: i64,
    down: bool,
}

/// Parse and validate a `PUT /input` body against `screen`.
pub fn parse_input_request(body: &[u8], screen: Screen) -> Result<Vec<InputAction>, InputError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(InputError::TooLarge(body.len()));
    }
    let body: Body =
        serde_json::from_slice(body).map_err(|e| InputError::BadJson(e.to_string()))?;
    match body {
        Body {
            touch: Some(points),
            key: None,
            down: None,
        } => touches(points, screen),
        Body {
            touch: None,
            key: Some(name),
            down: Some(down),
        } => {
            let code = key_code(&name).ok_or(InputError::UnknownKey(name))?;
            Ok(vec![InputAction::Key { code, down }])
        }
        Body {
            touch: None,
            key: Some(_),
            down: None,
        } => Err(InputError::BadJson(
            "\"key\" needs \"down\": true|false".into(),
        )),
        _ => Err(InputError::BadJson(
            "give either \"touch\" or \"key\"+\"down\"".into(),
        )),
    }
}

fn touches(points: Vec<TouchPoint>, screen: Screen) -> Result<Vec<InputAction>, InputError> {
    if points.is_empty() {
        return Err(InputError::BadJson("\"touch\" is empty".into()));
    }
    if points.len() > TOUCH_SLOTS as usize {
        return Err(InputError::TooManyTouches(points.len()));
    }
    let mut seen = 0u32;
    points
        .into_iter()
        .map(|p| {
            if p.id >= TOUCH_SLOTS {
                return Err(InputError::BadTouchId(p.id));
            }
            if seen & (1 << p.id) != 0 {
                return Err(InputError::DuplicateTouchId(p.id));
            }
            seen |= 1 << p.id;
            let inside = |v: i64, max: u32| (0..i64::from(max)).contains(&v);
            if !inside(p.x, screen.width) || !inside(p.y, screen.height) {
                return Err(InputError::OutOfScreen {
                    id: p.id,
                    x: p.x,
                    y: p.y,
                    width: screen.width,
                    height: screen.height,
                });
            }
            Ok(InputAction::Touch {
                id: p.id,
                x: p.x as u32,
                y: p.y as u32,
                down: p.down,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCREEN: Screen = Screen {
        width: 720,
        height: 1280,
    };

    fn parse(s: &str) -> Result<Vec<InputAction>, InputError> {
        parse_input_request(s.as_bytes(), SCREEN)
    }

    #[test]
    fn accepts_touch_and_key() {
        assert_eq!(
            parse(
                r#"{"touch":[{"id":0,"x":10,"y":20,"down":true},{"id":9,"x":719,"y":1279,"down":false}]}"#
            ),
            Ok(vec![
                InputAction::Touch {
                    id: 0,
                    x: 10,
                    y: 20,
                    down: true
                },
                InputAction::Touch {
                    id: 9,
                    x: 719,
                    y: 1279,
                    down: false
                },
            ])
        );
        assert_eq!(
            parse(r#"{"key":"HOME","down":true}"#),
            Ok(vec![InputAction::Key {
                code: 172,
                down: true
            }])
        );
    }

    #[test]
    fn rejects_with_specific_errors() {
        assert!(matches!(
            parse(r#"{"touch":[{"id":0,"x":720,"y":0,"down":true}]}"#),
            Err(InputError::OutOfScreen { .. })
        ));
        assert!(matches!(
            parse(r#"{"touch":[{"id":0,"x":-1,"y":0,"down":true}]}"#),
            Err(InputError::OutOfScreen { .. })
        ));
        assert_eq!(
            parse(r#"{"touch":[{"id":10,"x":1,"y":1,"down":true}]}"#),
            Err(InputError::BadTouchId(10))
        );
        assert_eq!(
            parse(
                r#"{"touch":[{"id":1,"x":1,"y":1,"down":true},{"id":1,"x":2,"y":2,"down":true}]}"#
            ),
            Err(InputError::DuplicateTouchId(1))
        );
        let eleven: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"id":{i},"x":1,"y":1,"down":true}}"#))
            .collect();
        assert_eq!(
            parse(&format!(r#"{{"touch":[{}]}}"#, eleven.join(","))),
            Err(InputError::TooManyTouches(11))
        );
        assert_eq!(
            parse(r#"{"key":"F13","down":true}"#),
            Err(InputError::UnknownKey("F13".into()))
        );
        for bad in [
            "",
            "{",
            "[]",
            r#"{"key":"HOME"}"#,
            r#"{"touch":[]}"#,
            r#"{"touch":[{"id":0,"x":1,"y":1}]}"#,
            r#"{"touch":[{"id":0,"x":1,"y":1,"down":true,"pressure":3}]}"#,
            r#"{"key":"HOME","down":true,"touch":[]}"#,
            r#"{"touch":[{"id":0,"x":1.5,"y":1,"down":true}]}"#,
            r#"{"touch":[{"id":-1,"x":1,"y":1,"down":true}]}"#,
        ] {
            assert!(matches!(parse(bad), Err(InputError::BadJson(_))), "{bad}");
        }
        let big = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            parse_input_request(&big, SCREEN),
            Err(InputError::TooLarge(MAX_REQUEST_BYTES + 1))
        );
        assert_eq!(InputError::QueueFull.http_status(), 503);
        assert_eq!(InputError::UnknownKey("x".into()).http_status(), 400);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// JSON-ish inputs: mutations of valid bodies plus arbitrary strings.
    fn arb_body() -> impl Strategy<Value = String> {
        let num = prop_oneof![-5i64..800, any::<i64>(), Just(i64::MAX), Just(-1)];
        let touch = (num.clone(), num.clone(), num, any::<bool>())
            .prop_map(|(id, x, y, down)| format!(r#"{{"id":{id},"x":{x},"y":{y},"down":{down}}}"#));
        prop_oneof![
            prop::collection::vec(touch, 0..13)
                .prop_map(|t| format!(r#"{{"touch":[{}]}}"#, t.join(","))),
            ("[A-Za-z_0-9]{0,12}", any::<bool>())
                .prop_map(|(k, d)| format!(r#"{{"key":"{k}","down":{d}}}"#)),
            ".{0,64}",
        ]
    }

    #[test]
    fn fuzz_input_request_parser() {
        const CASES: u32 = 3000;
        let screen = Screen {
            width: 720,
            height: 1280,
        };
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: CASES,
            ..ProptestConfig::default()
        });
        runner
            .run(&arb_body(), |body| {
                if let Ok(actions) = parse_input_request(body.as_bytes(), screen) {
                    prop_assert!(!actions.is_empty() && actions.len() <= 10);
                    for a in actions {
                        if let InputAction::Touch { id, x, y, .. } = a {
                            prop_assert!(id < 10 && x < 720 && y < 1280);
                        }
                    }
                }
                Ok(())
            })
            .unwrap();
        eprintln!("fuzz input_request_parser: {CASES} cases");
    }
}
