//! Request routing: path + method -> an action on the VM -> JSON.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::device_routes::{route_device, DEVICE_ROUTES};
use super::http::{Request, Response};
use super::stream::StreamSlot;
use crate::vm::DeviceHandles;

/// Default and maximum `timeout_ms` for `PUT /shutdown`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Upper bound on `timeout_ms`.
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 600_000;

/// What `GET /status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// running | paused | shutting_down.
    pub state: &'static str,
    /// vCPU count.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Milliseconds since boot.
    pub uptime_ms: u128,
}

/// The operations the API performs on a VM (a trait so routing is testable without KVM).
pub trait VmApi: Send + Sync {
    /// Current status.
    fn status(&self) -> anyhow::Result<Status>;
    /// ACPI power button, forced off after `timeout`.
    fn shutdown(&self, timeout: Duration) -> anyhow::Result<()>;
    /// Reset the guest.
    fn reboot(&self) -> anyhow::Result<()>;
    /// Park the vCPUs.
    fn pause(&self) -> anyhow::Result<()>;
    /// Resume the vCPUs.
    fn resume(&self) -> anyhow::Result<()>;
    /// Handles of the GPU, input and balloon devices.
    fn devices(&self) -> anyhow::Result<DeviceHandles>;
}

/// What the server sends back: a whole response, or a stream of damage events.
pub enum Reply {
    /// A complete response.
    Full(Response),
    /// `GET /framebuffer/events`: stream this subscription (holding one stream slot).
    DamageStream(cloudphone_display::DamageReceiver, StreamSlot),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Full(r)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShutdownBody {
    timeout_ms: Option<u64>,
}

fn parse_shutdown(body: &[u8]) -> Result<Duration, Response> {
    let parsed: ShutdownBody = if body.iter().all(u8::is_ascii_whitespace) {
        ShutdownBody::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Response::error(
                400,
                format!("bad JSON body for /shutdown: {e}; expected {{\"timeout_ms\": N}}"),
            )
        })?
    };
    let ms = parsed.timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS);
    if !(1..=MAX_SHUTDOWN_TIMEOUT_MS).contains(&ms) {
        return Err(Response::error(
            400,
            format!("timeout_ms {ms} out of range: use 1..={MAX_SHUTDOWN_TIMEOUT_MS}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

fn done(r: anyhow::Result<()>) -> Response {
    match r {
        Ok(()) => Response::json(200, &json!({})),
        Err(e) => Response::error(409, format!("{e:#}")),
    }
}

const KNOWN: &[(&str, &str)] = &[
    ("/status", "GET"),
    ("/shutdown", "PUT"),
    ("/reboot", "PUT"),
    ("/pause", "PUT"),
    ("/resume", "PUT"),
];

/// Answer `req` using `vm`.
pub fn route(req: &Request, vm: &dyn VmApi) -> Reply {
    let m = req.method.as_str();
    if let Some(reply) = route_device(m, &req.path, &req.body, || vm.devices()) {
        return reply;
    }
    route_vm(req, vm).into()
}

fn route_vm(req: &Request, vm: &dyn VmApi) -> Response {
    let m = req.method.as_str();
    match (m, req.path.as_str()) {
        ("GET", "/status") => match vm.status() {
            Ok(s) => Response::json(
                200,
                &json!({
                    "state": s.state,
                    "vcpus": s.vcpus,
                    "memory_mib": s.memory_mib,
                    "uptime_ms": s.uptime_ms as u64,
                    "pid": std::process::id(),
                }),
            ),
            Err(e) => Response::error(409, format!("{e:#}")),
        },
        ("PUT", "/shutdown") => match parse_shutdown(&req.body) {
            Ok(t) => done(vm.shutdown(t)),
            Err(resp) => resp,
        },
        ("PUT", "/reboot") => done(vm.reboot()),
        ("PUT", "/pause") => done(vm.pause()),
        ("PUT", "/resume") => done(vm.resume()),
        (_, p) => match KNOWN.iter().chain(DEVICE_ROUTES).find(|(path, _)| *path == p) {
            Some((_, want)) => Response::error(405, format!("{p} takes {want}, not {m}")),
            None => Response::error(
                404,
                format!(
                    "unknown path {p}; see vmm/API.md for /status, /shutdown, /reboot, /pause, /resume, /input, /framebuffer, /framebuffer/events, /screenshot, /balloon"
                ),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }

    impl VmApi for Fake {
        fn status(&self) -> anyhow::Result<Status> {
            Ok(Status {
                state: "running",
                vcpus: 2,
                memory_mib: 256,
                uptime_ms: 5,
            })
        }
        fn shutdown(&self, t: Duration) -> anyhow::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("shutdown {}", t.as_millis()));
            Ok(())
        }
        fn reboot(&self) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push("reboot".into());
            Ok(())
        }
        fn pause(&self) -> anyhow::Result<()> {
            anyhow::bail!("already paused")
        }
        fn resume(&self) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push("resume".into());
            Ok(())
        }
        fn devices(&self) -> anyhow::Result<DeviceHandles> {
            Ok(DeviceHandles::default())
        }
    }

    fn route(r: &Request, vm: &dyn VmApi) -> Response {
        match super::route(r, vm) {
            Reply::Full(r) => r,
            Reply::DamageStream(..) => panic!("unexpected stream"),
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn status_and_actions() {
        let vm = Fake::default();
        let r = route(&req("GET", "/status", ""), &vm);
        assert_eq!(r.status, 200);
        let b = body(&r);
        assert_eq!(b["state"], "running");
        assert_eq!(b["vcpus"], 2);
        assert_eq!(b["memory_mib"], 256);
        assert_eq!(b["pid"], std::process::id());
        assert_eq!(route(&req("PUT", "/shutdown", ""), &vm).status, 200);
        assert_eq!(
            route(&req("PUT", "/shutdown", r#"{"timeout_ms":50}"#), &vm).status,
            200
        );
        assert_eq!(route(&req("PUT", "/reboot", ""), &vm).status, 200);
        assert_eq!(route(&req("PUT", "/resume", ""), &vm).status, 200);
        let r = route(&req("PUT", "/pause", ""), &vm);
        assert_eq!(r.status, 409);
        assert!(body(&r)["error"]
            .as_str()
            .unwrap()
            .contains("already paused"));
        assert_eq!(
            *vm.calls.lock().unwrap(),
            vec!["shutdown 10000", "shutdown 50", "reboot", "resume"]
        );
    }

    #[test]
    fn bad_requests_get_reasons() {
        let vm = Fake::default();
        for (m, p, b, status) in [
            ("PUT", "/shutdown", "{", 400),
            ("PUT", "/shutdown", r#"{"timeout_ms":0}"#, 400),
            ("PUT", "/shutdown", r#"{"timeout_ms":-5}"#, 400),
            ("PUT", "/shutdown", r#"{"timeout":5}"#, 400),
            ("PUT", "/shutdown", r#"{"timeout_ms":99999999999}"#, 400),
            ("GET", "/shutdown", "", 405),
            ("PUT", "/status", "", 405),
            ("GET", "/nope", "", 404),
            ("GET", "/framebuffer", "", 409),
            ("PUT", "/balloon", r#"{"target_mib":1}"#, 409),
            ("GET", "/input", "", 405),
            ("DELETE", "/balloon", "", 405),
            ("PUT", "/screenshot", "", 405),
        ] {
            let r = route(&req(m, p, b), &vm);
            assert_eq!(r.status, status, "{m} {p} {b}");
            assert!(!body(&r)["error"].as_str().unwrap().is_empty());
        }
        assert!(vm.calls.lock().unwrap().is_empty());
    }
}
