//! Handlers of the routes that talk to devices: `/input`, `/framebuffer`,
//! `/framebuffer/events`, `/screenshot`, `/balloon` (the table in [`super::routes`] says which
//! path and method reach each). A VM without the device answers 409 naming the option that
//! adds it.

use std::time::Duration;

use cloudphone_vmm_api::BalloonRequest;
use serde_json::json;

use super::http::{Reply, Response};
use super::stream::{StreamSlot, MAX_STREAMS};
use crate::vm::DeviceHandles;

/// How long `GET /balloon` waits for the guest to send fresh statistics.
const BALLOON_STATS_WAIT: Duration = Duration::from_millis(500);

fn missing(what: &str, option: &str) -> Reply {
    Response::error(
        409,
        format!("this VM has no {what}: start cloudphone-vmm with {option}"),
    )
    .into()
}

fn no_display() -> Reply {
    missing("display", "--gpu width=W,height=H")
}

/// `PUT /input`: inject touch or key events.
pub fn put_input(handles: &DeviceHandles, body: &[u8]) -> Reply {
    let Some(input) = &handles.input else {
        return missing("input devices", "--input touch,keyboard");
    };
    match input.inject_json(body) {
        Ok(()) => Response::json(200, &json!({})),
        Err(e) => Response::error(e.http_status(), e.to_string()),
    }
    .into()
}

/// `GET /framebuffer`: where the pixels are, for a streamer to map them.
pub fn framebuffer(handles: &DeviceHandles, _body: &[u8]) -> Reply {
    match &handles.framebuffer {
        None => no_display(),
        Some(fb) => Response::ok_json(&fb.info()).into(),
    }
}

/// `GET /framebuffer/events`: a damage stream, while fewer than [`MAX_STREAMS`] are open.
pub fn framebuffer_events(handles: &DeviceHandles, _body: &[u8]) -> Reply {
    match (&handles.framebuffer, StreamSlot::acquire()) {
        (None, _) => no_display(),
        (Some(_), None) => Response::error(
            503,
            format!("{MAX_STREAMS} event streams are already open; close one and retry"),
        )
        .into(),
        (Some(fb), Some(slot)) => Reply::DamageStream(fb.subscribe(), slot),
    }
}

/// `GET /screenshot`: the screen as PNG.
pub fn screenshot(handles: &DeviceHandles, _body: &[u8]) -> Reply {
    match handles
        .framebuffer
        .as_ref()
        .map(cloudphone_display::screenshot_png)
    {
        None => no_display(),
        Some(Ok(png)) => Response {
            status: 200,
            content_type: "image/png",
            body: png,
        }
        .into(),
        Some(Err(e)) => Response::error(500, format!("screenshot failed: {e}")).into(),
    }
}

/// `GET /balloon`: the balloon's target and the guest's latest memory statistics.
pub fn balloon(handles: &DeviceHandles, _body: &[u8]) -> Reply {
    match &handles.balloon {
        None => missing("balloon", "--balloon"),
        Some(b) => Response::ok_json(&b.status(BALLOON_STATS_WAIT)).into(),
    }
}

/// `PUT /balloon`: a new target for the balloon.
pub fn put_balloon(handles: &DeviceHandles, body: &[u8]) -> Reply {
    let Some(balloon) = &handles.balloon else {
        return missing("balloon", "--balloon");
    };
    let parsed: BalloonRequest = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return Response::error(
                400,
                format!("bad JSON body for /balloon: {e}; expected {{\"target_mib\": N}}"),
            )
            .into()
        }
    };
    match balloon.set_target_mib(parsed.target_mib) {
        Ok(()) => Response::ok_json(&balloon.snapshot()),
        Err(e) => Response::error(400, e.to_string()),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudphone_balloon::Balloon;
    use cloudphone_display::{FramebufferExport, InputDevices, InputSpec, Screen};

    const GUEST_MIB: u64 = 256;

    struct Devices {
        handles: DeviceHandles,
        _dir: TempDir,
    }

    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn devices() -> Devices {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-devroutes-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fb = FramebufferExport::create(&dir, 64, 96).unwrap();
        let input = InputDevices::new(
            InputSpec {
                touch: true,
                keyboard: true,
            },
            Screen {
                width: 64,
                height: 96,
            },
        )
        .unwrap();
        let (_balloon, balloon) = Balloon::new(GUEST_MIB).unwrap();
        Devices {
            handles: DeviceHandles {
                framebuffer: Some(fb),
                input: Some(input.handle),
                balloon: Some(balloon),
            },
            _dir: TempDir(dir),
        }
    }

    type Handler = fn(&DeviceHandles, &[u8]) -> Reply;

    fn call(handles: &DeviceHandles, handler: Handler, body: &str) -> Response {
        match handler(handles, body.as_bytes()) {
            Reply::Full(r) => r,
            Reply::DamageStream(..) => panic!("unexpected stream"),
        }
    }

    fn json_body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn framebuffer_info_and_screenshot() {
        let d = devices();
        let r = call(&d.handles, framebuffer, "");
        assert_eq!(r.status, 200);
        let info = json_body(&r);
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(64), Some(96))
        );
        assert_eq!(info["stride"], 64 * 4);
        assert!(std::path::Path::new(info["path"].as_str().unwrap()).exists());
        let r = call(&d.handles, screenshot, "");
        assert_eq!((r.status, r.content_type), (200, "image/png"));
        assert_eq!(&r.body[..8], b"\x89PNG\r\n\x1a\n");
        match framebuffer_events(&d.handles, b"") {
            Reply::DamageStream(..) => {}
            Reply::Full(_) => panic!("GET /framebuffer/events must stream"),
        }
    }

    #[test]
    fn input_accepts_valid_and_rejects_hostile_bodies() {
        let d = devices();
        let ok = call(
            &d.handles,
            put_input,
            r#"{"touch":[{"id":0,"x":10,"y":20,"down":true}]}"#,
        );
        assert_eq!(ok.status, 200, "{:?}", json_body(&ok));
        assert_eq!(
            call(&d.handles, put_input, r#"{"key":"HOME","down":true}"#).status,
            200
        );
        for body in [
            "",
            "{",
            "null",
            r#"{"touch":[{"id":0,"x":64,"y":0,"down":true}]}"#,
            r#"{"touch":[{"id":0,"x":-1,"y":0,"down":true}]}"#,
            r#"{"touch":[{"id":99,"x":1,"y":1,"down":true}]}"#,
            r#"{"key":"NOPE","down":true}"#,
            r#"{"key":"HOME","down":true,"extra":1}"#,
        ] {
            let r = call(&d.handles, put_input, body);
            assert!((400..500).contains(&r.status), "{body:?}: {}", r.status);
            assert!(!json_body(&r)["error"].as_str().unwrap().is_empty());
        }
        let big = format!(r#"{{"key":"{}","down":true}}"#, "A".repeat(40_000));
        assert!((400..500).contains(&call(&d.handles, put_input, &big).status));
    }

    #[test]
    fn balloon_target_validated() {
        let d = devices();
        let r = call(&d.handles, put_balloon, r#"{"target_mib":64}"#);
        assert_eq!(r.status, 200, "{:?}", json_body(&r));
        assert_eq!(json_body(&r)["target_mib"], 64);
        assert_eq!(d.handles.balloon.as_ref().unwrap().target_mib(), 64);
        for body in [
            "",
            "{}",
            r#"{"target_mib":-1}"#,
            r#"{"target_mib":"1"}"#,
            r#"{"target_mib":257}"#,
            r#"{"target_mib":18446744073709551616}"#,
            r#"{"target_mib":1,"x":2}"#,
        ] {
            let r = call(&d.handles, put_balloon, body);
            assert_eq!(r.status, 400, "{body:?}");
        }
        assert_eq!(d.handles.balloon.as_ref().unwrap().target_mib(), 64);
        let r = call(&d.handles, balloon, "");
        assert_eq!(r.status, 200);
        assert_eq!(json_body(&r)["target_mib"], 64);
    }

    #[test]
    fn absent_devices_name_the_option() {
        let none = DeviceHandles::default();
        let handlers: [(Handler, &str); 6] = [
            (put_input, "--input"),
            (framebuffer, "--gpu"),
            (framebuffer_events, "--gpu"),
            (screenshot, "--gpu"),
            (balloon, "--balloon"),
            (put_balloon, "--balloon"),
        ];
        for (handler, option) in handlers {
            let r = call(&none, handler, r#"{"target_mib":1}"#);
            assert_eq!(r.status, 409, "{option}");
            assert!(json_body(&r)["error"].as_str().unwrap().contains(option));
        }
    }

    #[test]
    fn stream_slots_are_capped() {
        let d = devices();
        let mut streams = Vec::new();
        let refused = loop {
            match framebuffer_events(&d.handles, b"") {
                Reply::DamageStream(rx, slot) => streams.push((rx, slot)),
                Reply::Full(r) => break r,
            }
            assert!(
                streams.len() <= MAX_STREAMS,
                "more than {MAX_STREAMS} streams open"
            );
        };
        assert_eq!(refused.status, 503);
        drop(streams);
        assert!(StreamSlot::acquire().is_some());
    }
}
