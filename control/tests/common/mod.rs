//! Shared test harness: real `cloudphone serve` processes on loopback over SQLite or
//! PostgreSQL, raw HTTP helpers, and a scripted host agent.
#![allow(dead_code)]

pub mod pg;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Runs the same async test body against both databases: `both!(name);` expects
/// `async fn name(kind: Kind)` in scope.
#[macro_export]
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::common::Kind::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::common::Kind::Postgres).await
            }
        }
    };
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);
impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!(
            "/tmp/cloudphone-{tag}-{}",
            cloudphone::ids::random_hex(6)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `cloudphone serve`.
pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub admin: String,
    args: Vec<String>,
    _data: TempDir,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cloudphone")
}

impl Server {
    /// Starts a server over a fresh database; `extra` are more `serve` flags.
    pub async fn start(kind: Kind, extra: &[&str]) -> Server {
        let data = TempDir::new("data");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data.0.display().to_string(),
            "--bootstrap-admin".into(),
            "admin".into(),
        ];
        if kind == Kind::Postgres {
            args.extend(["--database".into(), pg::fresh_database().await]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            child: None,
            url: String::new(),
            admin: String::new(),
            args,
            _data: data,
        };
        s.spawn(None);
        s
    }

    fn spawn(&mut self, port: Option<u16>) {
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        let mut child = Command::new(bin())
            .args(&self.args)
            .args(["--listen", &listen])
            .env("CLOUDPHONE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cloudphone serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Some(t) = line.split("token: ").nth(1) {
                self.admin = t.trim().to_owned();
            }
            if let Some(u) = line.strip_prefix("listening on ") {
                self.url = u.trim().to_owned();
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// A second `serve` process on the same database and flags (a replica; PostgreSQL
    /// only, SQLite is one process's file). It shares the first one's operator.
    pub fn replica(&self) -> Server {
        assert!(
            self.args.iter().any(|a| a == "--database"),
            "replicas need PostgreSQL"
        );
        let mut r = Server {
            child: None,
            url: String::new(),
            admin: self.admin.clone(),
            args: self.args.clone(),
            _data: TempDir::new("replica"),
        };
        r.spawn(None);
        r.admin = self.admin.clone();
        r
    }

    /// The process id of the running server (to read its memory use).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The server's `--data-dir` (its SQLite database is `cloudphone.db` there).
    pub fn data_dir(&self) -> &std::path::Path {
        &self._data.0
    }

    /// SIGKILL, no cleanup: what a crash or power cut of the process looks like.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and database.
    pub fn restart(&mut self) {
        let port: u16 = self.url.rsplit(':').next().unwrap().parse().unwrap();
        self.kill9();
        for _ in 0..50 {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(Some(port));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP exchange with full control over the body (for hostile-input tests).
pub async fn raw(
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value) {
    let c = reqwest::Client::new();
    let mut r = c.request(method.parse().unwrap(), format!("{url}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b);
    }
    let res = r.send().await.expect("request sent");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// JSON request under `/api/v1`.
pub async fn api(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    raw(
        &s.url,
        method,
        &format!("/api/v1{path}"),
        Some(token),
        body.map(|b| b.to_string()),
    )
    .await
}

/// Like [`api`] but asserts the status.
pub async fn ok(
    s: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
    want: u16,
) -> Value {
    let (st, v) = api(s, method, path, token, body).await;
    assert_eq!(st, want, "{method} {path}: {v}");
    v
}

/// Creates a user; returns (id, token).
pub async fn user(s: &Server, name: &str, role: &str, max_phones: u32) -> (String, String) {
    let v = ok(
        s,
        "POST",
        "/users",
        &s.admin.clone(),
        Some(json!({"name": name, "role": role, "max_phones": max_phones})),
        201,
    )
    .await;
    (
        v["user"]["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

/// Creates a profile with a warm pool; returns its id.
pub async fn profile(s: &Server, name: &str, pool: u32) -> String {
    let body = json!({"name": name, "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "pool_size": pool});
    ok(s, "POST", "/profiles", &s.admin.clone(), Some(body), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Profile "pixel" with a warm pool of `pool` phones, all `ready` on a fake host `name` with
/// room for `max_phones`: where most lease and route tests start.
pub async fn warm_pool(s: &Server, name: &str, max_phones: u32, pool: u32) -> FakeHost {
    profile(s, "pixel", pool).await;
    let host = FakeHost::register(s, name, max_phones).await;
    host.bring_up(s, pool as usize).await;
    host
}

/// `POST /leases` for `profile` as `token`, expecting an immediate grant (201).
pub async fn lease_phone(s: &Server, token: &str, profile: &str) -> Value {
    ok(
        s,
        "POST",
        "/leases",
        token,
        Some(json!({"profile": profile})),
        201,
    )
    .await
}

/// Enrols host `name` with state root `root` and caps as the admin; returns its join token.
pub async fn enrol(s: &Server, name: &str, root: &str, max_phones: u32) -> String {
    enrolment(s, name, root, max_phones).await["join_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `POST /hosts` as the admin: the enrolled host and its join token.
async fn enrolment(s: &Server, name: &str, root: &str, max_phones: u32) -> Value {
    let body = json!({"name": name, "state_root": root, "vcpus": 1024, "memory_mib": 1 << 20,
                      "max_phones": max_phones});
    ok(s, "POST", "/hosts", &s.admin, Some(body), 201).await
}

/// Like [`enrol`] for a host a real agent will run on: its policy's CPU busy limit lifted,
/// because the agent measures this shared, busy test machine and would otherwise refuse
/// phones whenever other tests load the CPUs (`placement.rs` tests the limit itself).
pub async fn enrol_agent_host(s: &Server, name: &str, root: &str, max_phones: u32) -> String {
    let v = enrolment(s, name, root, max_phones).await;
    let policy =
        json!({"vcpu_pct": 500, "memory_pct": 200, "reserve_mib": 512, "cpu_busy_limit_pct": 100});
    let path = format!("/hosts/{}/policy", v["host"]["id"].as_str().unwrap());
    ok(s, "PUT", &path, &s.admin, Some(policy), 200).await;
    v["join_token"].as_str().unwrap().to_owned()
}

/// Trades a join token for a host key: `(host id, key)`.
pub async fn join(s: &Server, join_token: &str) -> (String, String) {
    let v = ok(
        s,
        "POST",
        "/hosts/join",
        "",
        Some(json!({"join_token": join_token})),
        200,
    )
    .await;
    let id = v["host"]["id"].as_str().unwrap().to_owned();
    (id, v["host_key"].as_str().unwrap().to_owned())
}

/// A scripted host agent speaking the agent protocol without VMMs.
pub struct FakeHost {
    pub id: String,
    pub token: String,
    /// Its enrolled state root (VMM sockets it reports lie inside).
    pub root: String,
}

impl FakeHost {
    /// Enrols, joins and registers a host offering `max_phones` (its cap too).
    pub async fn register(s: &Server, name: &str, max_phones: u32) -> FakeHost {
        // A real directory: the streamer resolves the reported socket's directory in it.
        let root = format!(
            "/tmp/cloudphone-fakehost-{name}-{}",
            cloudphone::ids::random_hex(4)
        );
        std::fs::create_dir_all(&root).unwrap();
        let (id, token) = join(s, &enrol(s, name, &root, max_phones).await).await;
        let body = json!({"vcpus": 1024, "memory_mib": 1 << 20, "max_phones": max_phones});
        ok(s, "POST", "/hosts/register", &token, Some(body), 201).await;
        FakeHost { id, token, root }
    }

    /// Heartbeat claiming `running`; returns the desired phones.
    pub async fn heartbeat(&self, s: &Server, running: &[String]) -> Vec<Value> {
        let v = ok(
            s,
            "POST",
            &format!("/hosts/{}/heartbeat", self.id),
            &self.token,
            Some(json!({"running": running})),
            200,
        )
        .await;
        v["phones"].as_array().unwrap().clone()
    }

    pub async fn report(&self, s: &Server, phone: &Value, state: &str) -> (u16, Value) {
        let body = json!({"state": state, "generation": phone["phone"]["generation"], "reason": "test agent"});
        api(
            s,
            "PUT",
            &format!(
                "/hosts/{}/phones/{}/state",
                self.id,
                phone["phone"]["id"].as_str().unwrap()
            ),
            &self.token,
            Some(body),
        )
        .await
    }

    /// Gives every phone a VMM API socket, as a real agent's reports do: the stream route
    /// grants sessions only for a phone with one. Nothing listens there: a session waits in
    /// signalling, or its stream finds no screen.
    pub async fn report_sockets(&self, s: &Server) {
        for p in self.heartbeat(s, &[]).await {
            let id = p["phone"]["id"].as_str().unwrap();
            let body = json!({"state": p["phone"]["state"], "generation": p["phone"]["generation"],
                              "reason": "test agent", "api_socket": format!("{}/{id}.sock", self.root)});
            let path = format!("/hosts/{}/phones/{id}/state", self.id);
            ok(s, "PUT", &path, &self.token, Some(body), 200).await;
        }
    }

    /// Drives every phone the control service wants towards `ready` (creating → booting →
    /// ready; resetting → ready), like a healthy agent would. Returns how many became ready.
    pub async fn converge(&self, s: &Server) -> usize {
        let mut ready = 0;
        for p in self.heartbeat(s, &[]).await {
            let st = p["phone"]["state"].as_str().unwrap().to_owned();
            if st == "creating" {
                assert_eq!(self.report(s, &p, "booting").await.0, 200);
            }
            if matches!(st.as_str(), "creating" | "booting" | "resetting") {
                let (code, v) = self.report(s, &p, "ready").await;
                assert_eq!(code, 200, "{v}");
                ready += 1;
            }
        }
        ready
    }

    /// Converges until `n` phones are ready or assigned.
    pub async fn bring_up(&self, s: &Server, n: usize) {
        for _ in 0..100 {
            self.converge(s).await;
            let phones = self.heartbeat(s, &[]).await;
            if phones
                .iter()
                .filter(|p| matches!(p["phone"]["state"].as_str(), Some("ready" | "assigned")))
                .count()
                >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("phones never came up");
    }
}
