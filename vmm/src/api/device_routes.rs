//! Routes that talk to devices: `/input`, `/framebuffer`, `/framebuffer/events`, `/screenshot`,
//! `/balloon`. A VM without the device answers 409 naming the option that adds it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::http::Response;
use super::routes::Reply;
use super::stream::{StreamSlot, MAX_STREAMS};
use crate::vm::DeviceHandles;

/// How long `GET /balloon` waits for the guest to send fresh statistics.
const BALLOON_STATS_WAIT: Duration = Duration::from_millis(500);

/// Paths and the method each takes.
pub const DEVICE_ROUTES: &[(&str, &str)] = &[
    ("/input", "PUT"),
    ("/framebuffer", "GET"),
    ("/framebuffer/events", "GET"),
    ("/screenshot", "GET"),
    ("/balloon", "GET or PUT"),
];

fn missing(what: &str, option: &str) -> Response {
    Response::error(
        409,
        format!("this VM has no {what}: start cloudphone-vmm with {option}"),
    )
}

fn json_value<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::error(500, format!("cannot serialize the reply: {e}")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonBody {
    target_mib: u64,
}

fn put_balloon(handles: &DeviceHandles, body: &[u8]) -> Response {
    let Some(balloon) = &handles.balloon else {
        return missing("balloon", "--balloon");
    };
    let parsed: BalloonBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            return Response::error(
                400,
                format!("bad JSON body for /balloon: {e}; expected {{\"target_mib\": N}}"),
            )
        }
    };
    match balloon.set_target_mib(parsed.target_mib) {
        Ok(()) => json_value(&balloon.snapshot()),
        Err(e) => Response::error(400, e.to_string()),
    }
}

/// Answer a device route, or `None` if `(method, path)` is not one.
pub fn route_device(
    method: &str,
    path: &str,
    body: &[u8],
    handles: impl FnOnce() -> anyhow::Result<DeviceHandles>,
) -> Option<Reply> {
    if !DEVICE_ROUTES.iter().any(|(p, _)| *p == path) {
        return None;
    }
    let known = matches!(
        (method, path),
        ("PUT", "/input")
            | ("GET", "/framebuffer")
            | ("GET", "/framebuffer/events")
            | ("GET", "/screenshot")
            | ("GET" | "PUT", "/balloon")
    );
    if !known {
        return None;
    }
    let handles = match handles() {
        Ok(h) => h,
        Err(e) => return Some(Response::error(409, format!("{e:#}")).into()),
    };
    let fb = handles.framebuffer.as_ref();
    let reply = match (method, path) {
        ("PUT", "/input") => match &handles.input {
            None => missing("input devices", "--input touch,keyboard"),
            Some(input) => match input.inject_json(body) {
                Ok(()) => Response::json(200, &json!({})),
                Err(e) => Response::error(e.http_status(), e.to_string()),
            },
        },
        ("GET", "/framebuffer") => match fb {
            None => missing("display", "--gpu width=W,height=H"),
            Some(fb) => json_value(&fb.info()),
        },
        ("GET", "/framebuffer/events") => match (fb, StreamSlot::acquire()) {
            (None, _) => missing("display", "--gpu width=W,height=H"),
            (Some(_), None) => Response::error(
                503,
                format!("{MAX_STREAMS} event streams are already open; close one and retry"),
            ),
            (Some(fb), Some(slot)) => return Some(Reply::DamageStream(fb.subscribe(), slot)),
        },
        ("GET", "/screenshot") => match fb.map(cloudphone_display::screenshot_png) {
            None => missing("display", "--gpu width=W,height=H"),
            Some(Ok(png)) => Response {
                status: 200,
                content_type: "image/png",
                body: png,
            },
            Some(Err(e)) => Response::error(500, format!("screenshot failed: {e}")),
        },
        ("PUT", "/balloon") => put_balloon(&handles, body),
        _ => match &handles.balloon {
            None => missing("balloon", "--balloon"),
            Some(b) => json_value(&b.status(BALLOON_STATS_WAIT)),
        },
    };
    Some(reply.into())
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

    fn call(handles: &DeviceHandles, method: &str, path: &str, body: &str) -> Response {
        match route_device(method, path, body.as_bytes(), || Ok(handles.clone())) {
            Some(Reply::Full(r)) => r,
            Some(Reply::DamageStream(..)) => panic!("{method} {path}: unexpected stream"),
            None => panic!("{method} {path}: not a device route"),
        }
    }

    fn json_body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn framebuffer_info_and_screenshot() {
        let d = devices();
        let r = call(&d.handles, "GET", "/framebuffer", "");
        assert_eq!(r.status, 200);
        let info = json_body(&r);
        assert_eq!(
            (info["width"].as_u64(), info["height"].as_u64()),
            (Some(64), Some(96))
        );
        assert_eq!(info["stride"], 64 * 4);
        assert!(std::path::Path::new(info["path"].as_str().unwrap()).exists());
        let r = call(&d.handles, "GET", "/screenshot", "");
        assert_eq!((r.status, r.content_type), (200, "image/png"));
        assert_eq!(&r.body[..8], b"\x89PNG\r\n\x1a\n");
        match route_device("GET", "/framebuffer/events", b"", || Ok(d.handles.clone())) {
            Some(Reply::DamageStream(..)) => {}
            _ => panic!("GET /framebuffer/events must stream"),
        }
    }

    #[test]
    fn input_accepts_valid_and_rejects_hostile_bodies() {
        let d = devices();
        let ok = call(
            &d.handles,
            "PUT",
            "/input",
            r#"{"touch":[{"id":0,"x":10,"y":20,"down":true}]}"#,
        );
        assert_eq!(ok.status, 200, "{:?}", json_body(&ok));
        assert_eq!(
            call(&d.handles, "PUT", "/input", r#"{"key":"HOME","down":true}"#).status,
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
            let r = call(&d.handles, "PUT", "/input", body);
            assert!((400..500).contains(&r.status), "{body:?}: {}", r.status);
            assert!(!json_body(&r)["error"].as_str().unwrap().is_empty());
        }
        let big = format!(r#"{{"key":"{}","down":true}}"#, "A".repeat(40_000));
        assert!((400..500).contains(&call(&d.handles, "PUT", "/input", &big).status));
    }

    #[test]
    fn balloon_target_validated() {
        let d = devices();
        let r = call(&d.handles, "PUT", "/balloon", r#"{"target_mib":64}"#);
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
            let r = call(&d.handles, "PUT", "/balloon", body);
            assert_eq!(r.status, 400, "{body:?}");
        }
        assert_eq!(d.handles.balloon.as_ref().unwrap().target_mib(), 64);
        let r = call(&d.handles, "GET", "/balloon", "");
        assert_eq!(r.status, 200);
        assert_eq!(json_body(&r)["target_mib"], 64);
    }

    #[test]
    fn absent_devices_name_the_option() {
        let none = DeviceHandles::default();
        for (m, p, option) in [
            ("PUT", "/input", "--input"),
            ("GET", "/framebuffer", "--gpu"),
            ("GET", "/framebuffer/events", "--gpu"),
            ("GET", "/screenshot", "--gpu"),
            ("GET", "/balloon", "--balloon"),
            ("PUT", "/balloon", "--balloon"),
        ] {
            let r = call(&none, m, p, r#"{"target_mib":1}"#);
            assert_eq!(r.status, 409, "{m} {p}");
            assert!(json_body(&r)["error"].as_str().unwrap().contains(option));
        }
        let r = match route_device("GET", "/screenshot", b"", || anyhow::bail!("restarting")) {
            Some(Reply::Full(r)) => r,
            _ => panic!("expected a full reply"),
        };
        assert_eq!(r.status, 409);
        assert!(route_device("GET", "/input", b"", || Ok(none.clone())).is_none());
        assert!(route_device("GET", "/status", b"", || Ok(none.clone())).is_none());
    }

    #[test]
    fn stream_slots_are_capped() {
        let d = devices();
        let mut streams = Vec::new();
        let refused = loop {
            match route_device("GET", "/framebuffer/events", b"", || Ok(d.handles.clone())) {
                Some(Reply::DamageStream(rx, slot)) => streams.push((rx, slot)),
                Some(Reply::Full(r)) => break r,
                None => panic!("not routed"),
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
