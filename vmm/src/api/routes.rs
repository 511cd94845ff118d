//! The API's one route table: path + method -> the handler that acts on the VM or one of its
//! devices. Unknown paths and wrong methods are answered from the same table, so the 404 and
//! 405 texts can never disagree with what is served.

use std::time::Duration;

use cloudphone_vmm_api::{path, ShutdownRequest, SnapshotRequest, StatusReply};
use serde_json::json;

use super::devices;
use super::http::{Reply, Request, Response};
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
    /// Write a snapshot of the paused VM into `dir`.
    fn snapshot(&self, dir: &std::path::Path) -> Result<(), crate::snapshot::SnapshotError>;
}

/// What a route does with the request body.
#[derive(Clone, Copy)]
enum Handler {
    /// An operation on the VM itself.
    Vm(fn(&dyn VmApi, &[u8]) -> Response),
    /// An operation on a device; the handles are fetched per request (a restart replaces them).
    Device(fn(&DeviceHandles, &[u8]) -> Reply),
}

/// Every route: path, method, handler (vmm/API.md documents the same list).
const ROUTES: &[(&str, &str, Handler)] = &[
    (path::STATUS, "GET", Handler::Vm(status)),
    (path::SHUTDOWN, "PUT", Handler::Vm(shutdown)),
    (path::REBOOT, "PUT", Handler::Vm(|vm, _| done(vm.reboot()))),
    (path::PAUSE, "PUT", Handler::Vm(|vm, _| done(vm.pause()))),
    (path::RESUME, "PUT", Handler::Vm(|vm, _| done(vm.resume()))),
    (path::INPUT, "PUT", Handler::Device(devices::put_input)),
    (
        path::FRAMEBUFFER,
        "GET",
        Handler::Device(devices::framebuffer),
    ),
    (
        path::FRAMEBUFFER_EVENTS,
        "GET",
        Handler::Device(devices::framebuffer_events),
    ),
    (
        path::SCREENSHOT,
        "GET",
        Handler::Device(devices::screenshot),
    ),
    (path::BALLOON, "GET", Handler::Device(devices::balloon)),
    (path::BALLOON, "PUT", Handler::Device(devices::put_balloon)),
    (path::SNAPSHOT, "PUT", Handler::Vm(snapshot)),
];

/// Answer `req` using `vm`.
pub fn route(req: &Request, vm: &dyn VmApi) -> Reply {
    let (method, path) = (req.method.as_str(), req.path.as_str());
    let found = ROUTES.iter().find(|(p, m, _)| *p == path && *m == method);
    match found.map(|route| route.2) {
        None => refuse(method, path).into(),
        Some(Handler::Vm(handler)) => handler(vm, &req.body).into(),
        Some(Handler::Device(handler)) => match vm.devices() {
            Ok(handles) => handler(&handles, &req.body),
            Err(e) => Response::error(409, format!("{e:#}")).into(),
        },
    }
}

/// 405 naming the methods `path` takes, or 404 listing every path.
fn refuse(method: &str, path: &str) -> Response {
    let methods: Vec<&str> = ROUTES
        .iter()
        .filter(|(p, ..)| *p == path)
        .map(|(_, m, _)| *m)
        .collect();
    if !methods.is_empty() {
        let want = methods.join(" or ");
        return Response::error(405, format!("{path} takes {want}, not {method}"));
    }
    let mut paths: Vec<&str> = ROUTES.iter().map(|(p, ..)| *p).collect();
    paths.dedup();
    Response::error(
        404,
        format!(
            "unknown path {path}; see vmm/API.md for {}",
            paths.join(", ")
        ),
    )
}

fn status(vm: &dyn VmApi, _body: &[u8]) -> Response {
    match vm.status() {
        Ok(s) => Response::ok_json(&StatusReply {
            state: s.state.to_owned(),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            uptime_ms: s.uptime_ms as u64,
            pid: std::process::id(),
        }),
        Err(e) => Response::error(409, format!("{e:#}")),
    }
}

fn shutdown(vm: &dyn VmApi, body: &[u8]) -> Response {
    match parse_shutdown(body) {
        Ok(timeout) => done(vm.shutdown(timeout)),
        Err(resp) => resp,
    }
}

fn parse_shutdown(body: &[u8]) -> Result<Duration, Response> {
    let parsed: ShutdownRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ShutdownRequest::default()
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

fn snapshot(vm: &dyn VmApi, body: &[u8]) -> Response {
    use crate::snapshot::SnapshotError;
    let req: SnapshotRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Response::error(
                400,
                format!(
                    "bad JSON body for /snapshot: {e}; expected {{\"dir\": \"/absolute/dir\"}}"
                ),
            )
        }
    };
    let dir = std::path::Path::new(&req.dir);
    if !dir.is_absolute() {
        return Response::error(
            400,
            format!("snapshot dir {:?} must be an absolute path", req.dir),
        );
    }
    match vm.snapshot(dir) {
        Ok(()) => Response::json(200, &json!({})),
        Err(e @ (SnapshotError::NotPaused | SnapshotError::DirExists(_))) => {
            Response::error(409, e.to_string())
        }
        Err(e @ SnapshotError::UnsupportedDevice { .. }) => Response::error(501, e.to_string()),
        Err(e) => Response::error(500, format!("snapshot failed: {e}")),
    }
}

fn done(r: anyhow::Result<()>) -> Response {
    match r {
        Ok(()) => Response::json(200, &json!({})),
        Err(e) => Response::error(409, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        /// Between two lives of an in-process restart: no devices for a moment.
        restarting: bool,
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
            if self.restarting {
                anyhow::bail!("restarting");
            }
            Ok(DeviceHandles::default())
        }
        fn snapshot(&self, dir: &std::path::Path) -> Result<(), crate::snapshot::SnapshotError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("snapshot {}", dir.display()));
            Err(crate::snapshot::SnapshotError::NotPaused)
        }
    }

    #[test]
    fn snapshot_needs_an_absolute_dir_and_a_paused_vm() {
        let vm = Fake::default();
        let put = |body: &str| {
            route(
                &Request {
                    method: "PUT".into(),
                    path: "/snapshot".into(),
                    body: body.as_bytes().to_vec(),
                },
                &vm,
            )
        };
        assert_eq!(put("").status, 400);
        assert_eq!(put(r#"{"dir": "relative/x"}"#).status, 400);
        assert_eq!(put(r#"{"dir": "/snaps/a", "extra": 1}"#).status, 400);
        let r = put(r#"{"dir": "/snaps/a"}"#);
        assert_eq!(r.status, 409);
        assert!(String::from_utf8_lossy(&r.body).contains("pause it first"));
        assert_eq!(*vm.calls.lock().unwrap(), vec!["snapshot /snaps/a"]);
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

    #[test]
    fn refusals_come_from_the_one_table() {
        let restarting = Fake {
            restarting: true,
            ..Fake::default()
        };
        let r = route(&req("GET", "/screenshot", ""), &restarting);
        assert_eq!(r.status, 409);
        assert!(body(&r)["error"].as_str().unwrap().contains("restarting"));
        let r = route(&req("DELETE", "/balloon", ""), &Fake::default());
        assert_eq!(body(&r)["error"], "/balloon takes GET or PUT, not DELETE");
        let r = route(&req("GET", "/nope", ""), &Fake::default());
        assert_eq!(
            body(&r)["error"],
            "unknown path /nope; see vmm/API.md for /status, /shutdown, /reboot, /pause, \
             /resume, /input, /framebuffer, /framebuffer/events, /screenshot, /balloon, /snapshot"
        );
    }
}
