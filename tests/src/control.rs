//! A `cloudphone serve` process for the end-to-end tests, and its JSON API over loopback.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::http::{self, Reply};
use crate::workspace_binary;

/// A child process killed (and reaped) on drop: servers and agents must not outlive a test.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    /// SIGTERM first, so a wrapper (e.g. `scripts/kvm-sandbox`) can stop what it started; SIGKILL
    /// after a grace period.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        let exited = crate::poll(Duration::from_secs(15), Duration::from_millis(100), || {
            Ok(self.0.try_wait()?.map(drop))
        });
        if matches!(exited, Ok(Some(()))) {
            return;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running control service with its bootstrap operator token.
pub struct ControlService {
    /// `host:port` it listens on.
    pub addr: String,
    /// The bootstrap operator's API token.
    pub admin: String,
    _process: ChildGuard,
}

impl ControlService {
    /// Start `cloudphone serve` on a free loopback port with its data in `data_dir` (a local
    /// filesystem: SQLite's WAL does not work on the sandbox's 9p share) plus `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(workspace_binary("cloudphone"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap-admin",
                "admin",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting cloudphone serve")?;
        let stdout = child.stdout.take().context("serve's stdout")?;
        let process = ChildGuard(child);
        let (mut addr, mut admin) = (String::new(), String::new());
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(t) = line.split("token: ").nth(1) {
                admin = t.trim().to_owned();
            }
            if let Some(u) = line.strip_prefix("listening on ") {
                addr = u.trim().trim_start_matches("http://").to_owned();
                break;
            }
        }
        if addr.is_empty() || admin.is_empty() {
            bail!("cloudphone serve exited before listening (see its stderr above)");
        }
        Ok(Self {
            addr,
            admin,
            _process: process,
        })
    }

    /// The service's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `method /api/v1<path>` as the holder of `token`.
    pub fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        http::request(
            &self.addr,
            method,
            &format!("/api/v1{path}"),
            Some(token),
            body.as_ref(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    /// Create a user (as the operator) and return the new user's API token.
    pub fn add_user(&self, name: &str, role: &str, password: Option<&str>) -> String {
        let mut body = json!({ "name": name, "role": role });
        if let Some(p) = password {
            body["password"] = json!(p);
        }
        let (code, user) = self.call("POST", "/users", &self.admin, Some(body));
        assert_eq!(code, 201, "creating user {name}: {user}");
        user["token"].as_str().expect("new user's token").to_owned()
    }

    /// Enrol host `name` (as the operator) with its agent's state root and caps; returns the
    /// one-time join token for the agent's `--join-token`. Its policy's CPU busy limit is
    /// lifted: the sandbox emulates its CPUs, so an agent in it measures them busy most of the
    /// time, and these tests are about other things than CPU placement.
    pub fn enrol_host(&self, name: &str, state_root: &str, max_phones: u32) -> String {
        let body = json!({"name": name, "state_root": state_root, "vcpus": 4096,
                          "memory_mib": 64 << 20, "max_phones": max_phones});
        let (code, v) = self.call("POST", "/hosts", &self.admin, Some(body));
        assert_eq!(code, 201, "enrolling host {name}: {v}");
        let policy = json!({"vcpu_pct": 500, "memory_pct": 200, "reserve_mib": 512,
                            "cpu_busy_limit_pct": 100});
        let path = format!(
            "/hosts/{}/policy",
            v["host"]["id"].as_str().expect("host id")
        );
        let (code, p) = self.call("PUT", &path, &self.admin, Some(policy));
        assert_eq!(code, 200, "lifting host {name}'s CPU limit: {p}");
        v["join_token"].as_str().expect("join token").to_owned()
    }

    /// Poll `probe` every 500 ms until it yields a value; panics with `diag()` after `timeout`.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        diag: impl Fn() -> String,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        crate::poll(timeout, Duration::from_millis(500), || Ok(probe()))
            .expect("a probe that cannot fail")
            .unwrap_or_else(|| panic!("timed out waiting for {what}\n{}", diag()))
    }
}
