//! The host agent against a real server, with a fake VMM script standing in for
//! cloudphone-vmm (tier 1, no KVM): boot, lease, release → reset, agent crash → phones
//! lost → reconciled with surviving VMMs (no orphans), pool shrink → stop, crash loops.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{lease_phone, ok, profile, user, Kind, Server, TempDir};
use serde_json::{json, Value};

fn fake_vmm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-vmm.py")
}

struct Agent {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Agent {
    /// Enrols host `h1` with `state` as its root and starts an agent joining with the token.
    async fn start(s: &Server, state: &Path, env: &[(&str, &str)]) -> Agent {
        let root = std::fs::canonicalize(state).unwrap();
        let join = common::enrol(s, "h1", &root.display().to_string(), 4).await;
        let args = [
            "agent",
            "--control",
            &s.url,
            "--join-token",
            &join,
            "--state-dir",
            &state.display().to_string(),
            "--vmm",
            &fake_vmm().display().to_string(),
            "--kernel",
            "/dev/null",
            "--interval-ms",
            "100",
            "--max-phones",
            "4",
            "--vcpus",
            "8",
            "--memory-mib",
            "8192",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut a = Agent {
            child: None,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        a.spawn();
        a
    }
    fn spawn(&mut self) {
        let child = Command::new(common::bin())
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .env("CLOUDPHONE_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start agent");
        self.child = Some(child);
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Pids of fake VMM processes (python) whose command line mentions `dir`.
fn vmm_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        let zombie = std::fs::read_to_string(e.path().join("stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        // Only the interpreter itself: launcher shims (pyenv) fork shells with the same argv.
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if cmd.contains(&needle)
            && cmd.contains("--api-socket")
            && !zombie
            && comm.starts_with("python")
        {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Kills leftover fake VMMs of a test (they outlive agents by design).
struct VmmReaper(PathBuf);
impl Drop for VmmReaper {
    fn drop(&mut self) {
        for pid in vmm_pids(&self.0) {
            // SAFETY: plain kill(2) of processes this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

async fn phones(s: &Server) -> Vec<Value> {
    ok(s, "GET", "/phones", &s.admin.clone(), None, 200)
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn wait_for(s: &Server, what: &str, cond: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = phones(s).await;
        if cond(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live(p: &[Value]) -> Vec<&Value> {
    p.iter()
        .filter(|p| !matches!(p["state"].as_str(), Some("stopped" | "failed" | "lost")))
        .collect()
}

fn count(p: &[Value], state: &str) -> usize {
    p.iter().filter(|p| p["state"] == state).count()
}

async fn agent_lifecycle(kind: Kind) {
    // 3 s: short enough to see a killed agent's phones go lost quickly, long enough that a
    // busy CI host (an agent restarting VMMs) does not miss heartbeats by accident.
    let s = Server::start(
        kind,
        &[
            "--heartbeat-timeout-ms",
            "3000",
            "--lost-after-ms",
            "3000",
            "--tick-ms",
            "100",
        ],
    )
    .await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    profile(&s, "pixel", 2).await;
    let state = TempDir::new("agent");
    let _reaper = VmmReaper(state.0.clone());
    let mut agent = Agent::start(&s, &state.0, &[]).await;

    let p = wait_for(&s, "2 ready phones", |p| count(p, "ready") == 2).await;
    assert_eq!(vmm_pids(&state.0).len(), 2, "one VMM per phone");
    for ph in &p {
        let sock = ph["api_socket"]
            .as_str()
            .expect("agent reported the API socket");
        assert!(Path::new(sock).exists(), "{sock}");
        let argv: Vec<String> = serde_json::from_str(
            &std::fs::read_to_string(Path::new(sock).with_file_name("argv.json")).unwrap(),
        )
        .unwrap();
        let argv = argv.join(" ");
        assert!(
            argv.contains("--gpu width=720,height=1280,dpi=320") && argv.contains("--memory 256"),
            "{argv}"
        );
    }

    // Lease → release → the phone is reset: new generation, new VMM process.
    let l = lease_phone(&s, &alice, "pixel").await;
    let phone_id = l["lease"]["phone_id"].as_str().unwrap().to_owned();
    let before = vmm_pids(&state.0);
    ok(
        &s,
        "DELETE",
        &format!("/leases/{}", l["lease"]["id"].as_str().unwrap()),
        &alice,
        None,
        200,
    )
    .await;
    let p = wait_for(&s, "reset phone ready", |p| {
        p.iter()
            .any(|x| x["id"] == phone_id.as_str() && x["state"] == "ready" && x["generation"] == 1)
    })
    .await;
    assert_eq!(count(&p, "ready"), 2);
    let after = vmm_pids(&state.0);
    assert_eq!(after.len(), 2);
    assert_ne!(before, after, "the reset phone runs a fresh VMM");

    // Agent killed: VMMs survive, phones go lost after the heartbeat timeout.
    agent.kill9();
    let survivors = vmm_pids(&state.0);
    wait_for(&s, "phones lost", |p| count(p, "lost") == 2).await;
    assert_eq!(vmm_pids(&state.0), survivors, "VMMs outlive the agent");
    // Agent back: adopts the running VMMs, resets them (their leases ended), no orphans.
    agent.spawn();
    let p = wait_for(&s, "reconciled", |p| count(p, "ready") == 2).await;
    assert!(p
        .iter()
        .all(|x| x["state"] == "ready" || x["state"] == "stopped"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        vmm_pids(&state.0).len(),
        2,
        "no orphan VMMs after reconciliation"
    );

    // Pool shrinks: one phone is stopped, its VMM gone and its directory removed.
    ok(
        &s,
        "PATCH",
        "/profiles/pixel",
        &s.admin.clone(),
        Some(json!({"pool_size": 1})),
        200,
    )
    .await;
    let p = wait_for(&s, "one stopped", |p| {
        live(p).len() == 1 && count(p, "ready") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(vmm_pids(&state.0).len(), 1);
    let stopped: Vec<&Value> = p.iter().filter(|x| x["state"] == "stopped").collect();
    for x in stopped {
        assert!(
            !state
                .0
                .join("phones")
                .join(x["id"].as_str().unwrap())
                .exists(),
            "stopped phone's dir removed"
        );
    }
}
both!(agent_lifecycle);

/// A VMM that keeps crashing is restarted with backoff, then reported failed with an audit
/// event; a VMM exiting with 32 (guest reboot) is simply restarted.
async fn crash_loop_and_reboot(kind: Kind) {
    let s = Server::start(
        kind,
        &["--heartbeat-timeout-ms", "5000", "--tick-ms", "100"],
    )
    .await;
    profile(&s, "pixel", 1).await;
    let state = TempDir::new("agent");
    let _reaper = VmmReaper(state.0.clone());
    let _agent = Agent::start(
        &s,
        &state.0,
        &[
            ("FAKE_VMM_EXIT_CODE", "33"),
            ("FAKE_VMM_EXIT_AFTER_MS", "200"),
        ],
    )
    .await;
    wait_for(&s, "failed phone", |p| count(p, "failed") >= 1).await;
    let audit = ok(&s, "GET", "/audit?limit=1000", &s.admin.clone(), None, 200).await;
    let ev = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "phone.crashloop")
        .expect("crash loop audited")
        .clone();
    assert!(
        ev["detail"].as_str().unwrap().contains("exit code 33"),
        "{ev}"
    );
    drop(_agent);

    let s = Server::start(
        kind,
        &["--heartbeat-timeout-ms", "5000", "--tick-ms", "100"],
    )
    .await;
    profile(&s, "pixel", 1).await;
    let state2 = TempDir::new("agent");
    let _reaper2 = VmmReaper(state2.0.clone());
    let _agent = Agent::start(
        &s,
        &state2.0,
        &[
            ("FAKE_VMM_EXIT_CODE", "32"),
            ("FAKE_VMM_EXIT_AFTER_MS", "200"),
        ],
    )
    .await;
    wait_for(&s, "ready phone", |p| count(p, "ready") == 1).await;
    // Over 3 s the VMM "reboots" repeatedly: always at most one process, restarted each time.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let pids = vmm_pids(&state2.0);
        assert!(pids.len() <= 1, "two VMMs for one phone: {pids:?}");
        seen.extend(pids);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.len() >= 2,
        "the VMM was restarted after exit 32: {seen:?}"
    );
    let p = phones(&s).await;
    assert_eq!(count(&p, "failed"), 0, "reboots are not crashes: {p:?}");
}
both!(crash_loop_and_reboot);

/// The control service down for longer than the heartbeat timeout (issue 15): on its return
/// the hosts get a grace period, a missed heartbeat only marks a host offline, so a
/// persistent lease survives and the phone's data is intact. A phone directory the service
/// does not know is quarantined, never deleted.
async fn service_outage_keeps_leases_and_data(kind: Kind) {
    let mut s = Server::start(
        kind,
        &[
            "--heartbeat-timeout-ms",
            "1000",
            "--lost-after-ms",
            "60000",
            "--tick-ms",
            "100",
        ],
    )
    .await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    profile(&s, "pixel", 1).await;
    let state = TempDir::new("agent");
    let _reaper = VmmReaper(state.0.clone());
    let _agent = Agent::start(&s, &state.0, &[]).await;
    wait_for(&s, "ready phone", |p| count(p, "ready") == 1).await;
    let body = json!({"profile": "pixel", "persistent": true});
    let l = ok(&s, "POST", "/leases", &alice, Some(body), 201).await;
    let (lease_id, phone_id) = (
        l["lease"]["id"].as_str().unwrap().to_owned(),
        l["lease"]["phone_id"].as_str().unwrap().to_owned(),
    );
    let data = state.0.join("phones").join(&phone_id).join("user-data.bin");
    std::fs::write(&data, b"photos").unwrap();
    let stray = state.0.join("phones").join("ph_00000000000000ff");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("user-data.bin"), b"unknown").unwrap();

    // Down for 3 heartbeat timeouts; the agent keeps retrying meanwhile.
    s.kill9();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    s.restart();
    // Several ticks past the timeout: reaping would have happened by now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lease = ok(&s, "GET", &format!("/leases/{lease_id}"), &alice, None, 200).await;
    assert_eq!(lease["state"], "active", "{lease}");
    let p = phones(&s).await;
    let ph = p.iter().find(|x| x["id"] == phone_id.as_str()).unwrap();
    assert_eq!(
        (ph["state"].as_str(), ph["generation"].as_i64()),
        (Some("assigned"), Some(0)),
        "{ph}"
    );
    assert_eq!(
        std::fs::read(&data).unwrap(),
        b"photos",
        "the phone's data is intact"
    );
    let host = &ok(&s, "GET", "/hosts", &s.admin.clone(), None, 200).await[0];
    assert_eq!(host["state"], "online", "{host}");

    // The stray directory went to quarantine with its data.
    assert!(!stray.exists(), "the unknown phone directory left phones/");
    let quarantined: Vec<PathBuf> = std::fs::read_dir(state.0.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    let name = quarantined[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.starts_with("ph_00000000000000ff."), "{name}");
    assert_eq!(
        std::fs::read(quarantined[0].join("user-data.bin")).unwrap(),
        b"unknown"
    );
}
both!(service_outage_keeps_leases_and_data);
