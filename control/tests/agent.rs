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
        Agent::launch(s, state, env, &[]).await
    }

    /// Like [`Agent::start`] with some flags' values replaced (`("--vcpus", "2")`).
    async fn start_with(s: &Server, state: &Path, flags: &[(&str, &str)]) -> Agent {
        Agent::launch(s, state, &[], flags).await
    }

    async fn launch(
        s: &Server,
        state: &Path,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Agent {
        let root = std::fs::canonicalize(state).unwrap();
        let join = common::enrol(s, "h1", &root.display().to_string(), 64).await;
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
        .collect::<Vec<String>>();
        let mut a = Agent {
            child: None,
            args: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        a.args = args;
        for (flag, value) in flags {
            match a.args.iter().position(|x| x == flag) {
                Some(i) => a.args[i + 1] = value.to_string(),
                None => a.args.extend([flag.to_string(), value.to_string()]),
            }
        }
        a.spawn();
        // Joined (the one-time token spent, the key kept) before a test may kill it.
        let key = state.join("host.key");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !key.exists() {
            assert!(Instant::now() < deadline, "the agent never joined");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// The balloon targets the agent set on phones' fake VMMs (those it ever resized).
async fn balloon_targets(s: &Server) -> Vec<i64> {
    phones(s)
        .await
        .iter()
        .filter_map(|ph| {
            let sock = Path::new(ph["api_socket"].as_str()?);
            let f = std::fs::read_to_string(sock.with_file_name("balloon.json")).ok()?;
            serde_json::from_str::<Value>(&f).ok()?["target_mib"].as_i64()
        })
        .collect()
}

/// The case that left a pool empty: a 2-vCPU host running one 2-vCPU phone now also runs a
/// pool of eight 1-vCPU phones (default policy: 5 phone vCPUs per core); the agent's
/// measurements reach `GET /hosts` (committed vs used); with the operator's policy at no
/// overcommit the pool stops growing; and a host short of memory (a reserve above what it has)
/// takes no new phone while its agent inflates the balloons of idle phones.
async fn placement_by_use(kind: Kind) {
    let s = Server::start(kind, &["--tick-ms", "100"]).await;
    let admin = s.admin.clone();
    let big = json!({"name": "big", "width": 720, "height": 1280, "dpi": 320, "vcpus": 2,
        "memory_mib": 1024, "image": "", "pool_size": 1});
    ok(&s, "POST", "/profiles", &admin, Some(big), 201).await;
    let state = TempDir::new("agent");
    let _reaper = VmmReaper(state.0.clone());
    let _agent = Agent::start_with(
        &s,
        &state.0,
        &[
            ("--vcpus", "2"),
            ("--max-phones", "32"),
            ("--devices", "balloon"),
        ],
    )
    .await;
    wait_for(&s, "the big phone ready", |p| count(p, "ready") == 1).await;
    profile(&s, "pixel", 8).await;
    wait_for(&s, "8 small phones beside the big one", |p| {
        count(p, "ready") == 9
    })
    .await;

    // The agent measures each VMM (python here: some MiB of private memory each).
    let hosts = loop {
        let h = ok(&s, "GET", "/hosts", &admin, None, 200).await;
        if h[0]["load"]["used_memory_mib"].as_i64().unwrap() > 0 {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let host = &hosts[0];
    let load = &host["load"];
    assert_eq!(load["phones"], 9, "{host}");
    assert_eq!(load["committed_vcpus"], 10, "{host}");
    assert_eq!(load["committed_memory_mib"], 1024 + 8 * 256, "{host}");
    let used = load["used_memory_mib"].as_i64().unwrap();
    assert!(
        used < load["committed_memory_mib"].as_i64().unwrap(),
        "fake VMMs use less than their nominal size: {host}"
    );
    assert!(host["mem_available_mib"].as_i64().unwrap() > 0, "{host}");
    let host_id = host["id"].as_str().unwrap().to_owned();

    // No overcommit: 2 vCPUs are taken by the big phone, so a bigger pool gets no phone.
    let strict = json!({"vcpu_pct": 100, "memory_pct": 100, "reserve_mib": 0});
    let h = ok(
        &s,
        "PUT",
        &format!("/hosts/{host_id}/policy"),
        &admin,
        Some(strict),
        200,
    )
    .await;
    assert_eq!(h["policy"]["vcpu_pct"], 100, "{h}");
    let pixel = ok(&s, "GET", "/profiles", &admin, None, 200).await;
    let pixel_id = pixel
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "pixel")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pool = |n: u32| json!({ "pool_size": n });
    ok(
        &s,
        "PATCH",
        &format!("/profiles/{pixel_id}"),
        &admin,
        Some(pool(9)),
        200,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        live(&phones(&s).await).len(),
        9,
        "no room without overcommit"
    );

    // Memory pressure: a reserve larger than the host keeps the pool from growing even with
    // vCPUs to spare, and the agent asks every idle phone's balloon for half its memory.
    let short = json!({"vcpu_pct": 2000, "memory_pct": 1000, "reserve_mib": 1 << 20});
    ok(
        &s,
        "PUT",
        &format!("/hosts/{host_id}/policy"),
        &admin,
        Some(short),
        200,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let targets = loop {
        let targets = balloon_targets(&s).await;
        if targets.len() == 9 {
            break targets;
        }
        assert!(Instant::now() < deadline, "balloons inflated: {targets:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        targets.iter().filter(|t| **t == 128).count(),
        8,
        "{targets:?}"
    );
    assert_eq!(
        targets.iter().filter(|t| **t == 512).count(),
        1,
        "{targets:?}"
    );
    assert_eq!(
        live(&phones(&s).await).len(),
        9,
        "no new phone under pressure"
    );

    // Pressure gone: balloons give everything back and the pool grows to 9 small phones.
    let relaxed = json!({"vcpu_pct": 2000, "memory_pct": 1000, "reserve_mib": 0});
    ok(
        &s,
        "PUT",
        &format!("/hosts/{host_id}/policy"),
        &admin,
        Some(relaxed),
        200,
    )
    .await;
    wait_for(&s, "the ninth small phone", |p| count(p, "ready") == 10).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let targets = balloon_targets(&s).await;
        if targets.len() == 9 && targets.iter().all(|t| *t == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "balloons deflated: {targets:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bad policies and bad measurements are refused.
    for (bad, status) in [
        (
            json!({"vcpu_pct": 0, "memory_pct": 100, "reserve_mib": 0}),
            400,
        ),
        (json!({"vcpu_pct": 100, "memory_pct": 100}), 422),
        (
            json!({"vcpu_pct": 100, "memory_pct": 100, "reserve_mib": 0, "x": 1}),
            422,
        ),
    ] {
        let p = format!("/hosts/{host_id}/policy");
        ok(&s, "PUT", &p, &admin, Some(bad), status).await;
    }
    let hb = |usage: Value| json!({"running": [], "usage": usage});
    for (usage, status) in [
        (json!({"mem_available_mib": -1, "phones": []}), 422),
        (
            json!({"mem_available_mib": 1, "phones": [{"id": "../x", "private_mib": 1, "pss_mib": 1, "cpu_ms": 1}]}),
            400,
        ),
        (json!({"mem_available_mib": 1u64 << 40, "phones": []}), 400),
    ] {
        let p = format!("/hosts/{host_id}/heartbeat");
        let key = std::fs::read_to_string(state.0.join("host.key")).unwrap();
        ok(&s, "POST", &p, key.trim(), Some(hb(usage)), status).await;
    }
}
both!(placement_by_use);

/// The fake VMM's argv for a phone (what the agent started it with).
fn argv_of(state: &Path, phone_id: &str) -> String {
    let file = state.join("phones").join(phone_id).join("argv.json");
    let argv: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    argv.join(" ")
}

/// A file of a phone's directory as text (a qcow2 overlay's binary parts lossily).
fn phone_file(state: &Path, phone_id: &str, name: &str) -> String {
    let bytes = std::fs::read(state.join("phones").join(phone_id).join(name)).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Why the agent last reported `phone_id` ready (the detail of its newest audit event).
async fn ready_reason(s: &Server, phone_id: &str) -> String {
    let events = ok(s, "GET", "/audit?limit=1000", &s.admin.clone(), None, 200).await;
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "phone.ready" && e["target"] == phone_id)
        .max_by_key(|e| e["at_ms"].as_i64())
        .map(|e| e["detail"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Leases a ready phone of "pixel" and releases it: the phone is reset to generation `+1`.
async fn lease_and_release(s: &Server, token: &str) -> String {
    let l = lease_phone(s, token, "pixel").await;
    let id = l["lease"]["phone_id"].as_str().unwrap().to_owned();
    let generation = phones(s)
        .await
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap()["generation"]
        .as_i64()
        .unwrap();
    let lease = format!("/leases/{}", l["lease"]["id"].as_str().unwrap());
    ok(s, "DELETE", &lease, token, None, 200).await;
    wait_for(s, "the released phone reset and ready", |p| {
        p.iter().any(|x| {
            x["id"] == id.as_str() && x["state"] == "ready" && x["generation"] == generation + 1
        })
    })
    .await;
    id
}

/// Warm pool from snapshots: the first phone of a phone-image profile cold-boots to
/// PHONE_READY and is paused, snapshotted (with its overlay frozen) and resumed; the phones
/// after it, and resets, are clones (`--restore`) with their own socket, consoles and a copy
/// of the frozen overlay. A new base image invalidates the snapshot (the next phone
/// cold-boots and makes a new one); a snapshot that fails to restore falls back to a cold boot.
async fn warm_pool_clones(kind: Kind) {
    let s = Server::start(
        kind,
        &["--heartbeat-timeout-ms", "5000", "--tick-ms", "100"],
    )
    .await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let images = TempDir::new("images");
    std::fs::write(images.0.join("base.img"), vec![0u8; 1 << 20]).unwrap();
    let boot = images.0.join("boot.img");
    std::fs::write(&boot, "android").unwrap();
    let body = json!({"name": "pixel", "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "base.img", "pool_size": 1});
    let profile_id = ok(&s, "POST", "/profiles", &s.admin.clone(), Some(body), 201).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = TempDir::new("agent");
    let _reaper = VmmReaper(state.0.clone());
    let mut agent = Agent::start_with(
        &s,
        &state.0,
        &[("--image-dir", &images.0.display().to_string())],
    )
    .await;
    agent.kill9();
    let at = agent.args.iter().position(|a| a == "--kernel").unwrap();
    agent.args[at] = "--boot-img".into();
    agent.args[at + 1] = boot.display().to_string();
    agent.spawn();

    let p = wait_for(&s, "the first phone ready", |p| count(p, "ready") == 1).await;
    let first = p[0]["id"].as_str().unwrap().to_owned();
    let why = ready_reason(&s, &first).await;
    assert!(why.contains("PHONE_READY"), "{why}");
    let snap = state.0.join("snapshots").join(&profile_id);
    assert!(snap.join("vm/state").is_file() && snap.join("identity").is_file());
    let cold = argv_of(&state.0, &first);
    assert!(
        cold.starts_with("--boot-img") && !cold.contains("--restore"),
        "{cold}"
    );
    let calls = phone_file(&state.0, &first, "calls.log");
    assert_eq!(
        calls,
        format!(
            "PUT /pause\nPUT /snapshot {}\nPUT /resume\n",
            std::path::absolute(state.0.join("snapshots"))
                .unwrap()
                .join(format!(".{profile_id}.partial/vm"))
                .display()
        ),
        "paused, snapshotted, resumed"
    );
    let frozen =
        String::from_utf8_lossy(&std::fs::read(snap.join("disk.qcow2")).unwrap()).into_owned();
    assert!(frozen.contains("written by"), "{frozen}");

    // A bigger pool: the second phone is a clone of the snapshot. The lease waits until the
    // first phone is ready again (a fresh-clone run once found it still between states).
    wait_for(&s, "the first phone ready to lease", |p| {
        count(p, "ready") == 1
    })
    .await;
    let l = lease_phone(&s, &alice, "pixel").await;
    assert_eq!(l["lease"]["phone_id"], json!(first));
    let pool = json!({"pool_size": 2});
    ok(
        &s,
        "PATCH",
        "/profiles/pixel",
        &s.admin.clone(),
        Some(pool),
        200,
    )
    .await;
    let p = wait_for(&s, "a clone ready", |p| count(p, "ready") == 1).await;
    let clone = p.iter().find(|x| x["state"] == "ready").unwrap();
    let clone_id = clone["id"].as_str().unwrap().to_owned();
    let why = ready_reason(&s, &clone_id).await;
    assert!(
        why.contains("restored from the profile's snapshot"),
        "{why}"
    );
    let argv = argv_of(&state.0, &clone_id);
    let own = state.0.join("phones").join(&clone_id);
    assert!(
        argv.starts_with(&format!("--restore {}", snap.join("vm").display())),
        "{argv}"
    );
    for mine in [
        "api.sock",
        "report.log",
        "console.log",
        "serial.log",
        "overlay.qcow2",
    ] {
        assert!(
            argv.contains(&own.join(mine).display().to_string()),
            "{mine}: {argv}"
        );
    }
    assert!(
        !argv.contains("--boot-img") && !argv.contains("--memory"),
        "{argv}"
    );
    // The clone's disk starts as the frozen overlay; its writes are its own.
    let disk = phone_file(&state.0, &clone_id, "overlay.qcow2");
    assert!(disk.starts_with(&frozen), "{disk}");
    assert_eq!(
        disk.matches("written by").count(),
        2,
        "the first phone's write and its own"
    );

    // Release: the reset phone is a clone too, on a fresh copy (nothing of its old disk).
    ok(
        &s,
        "DELETE",
        &format!("/leases/{}", l["lease"]["id"].as_str().unwrap()),
        &alice,
        None,
        200,
    )
    .await;
    wait_for(&s, "the first phone reset", |p| {
        p.iter()
            .any(|x| x["id"] == first.as_str() && x["state"] == "ready" && x["generation"] == 1)
    })
    .await;
    assert!(argv_of(&state.0, &first).starts_with("--restore"));
    let disk = phone_file(&state.0, &first, "overlay.qcow2");
    assert!(disk.starts_with(&frozen) && disk.matches("written by").count() == 2);
    let other = phone_file(&state.0, &clone_id, "overlay.qcow2");
    assert_ne!(disk, other, "no clone sees another's writes");

    // A new base image invalidates the snapshot: the next reset cold-boots and snapshots anew.
    let old_identity = std::fs::read_to_string(snap.join("identity")).unwrap();
    std::fs::write(images.0.join("base.img"), vec![0u8; 2 << 20]).unwrap();
    let reset = lease_and_release(&s, &alice).await;
    assert!(argv_of(&state.0, &reset).starts_with("--boot-img"));
    let new_identity = std::fs::read_to_string(snap.join("identity")).unwrap();
    assert_ne!(old_identity, new_identity);
    assert!(
        new_identity.contains(&format!("size={}", 2 << 20)),
        "{new_identity}"
    );

    // A snapshot the VMM refuses: the phone cold-boots instead and the snapshot is dropped.
    std::fs::write(snap.join("vm/state"), "not a snapshot").unwrap();
    let reset = lease_and_release(&s, &alice).await;
    assert!(
        argv_of(&state.0, &reset).starts_with("--boot-img"),
        "cold boot after the failed restore"
    );
    assert!(!snap.exists(), "the broken snapshot is deleted");
    assert_eq!(count(&phones(&s).await, "failed"), 0);

    // A clone whose guest never reports its own identity is not handed out: it is cold-booted
    // (a new agent run: the next cold boot makes a new snapshot, the reset after it is a clone).
    agent.kill9();
    agent.env.push(("FAKE_VMM_SILENT_CLONE".into(), "1".into()));
    agent
        .args
        .extend(["--clone-identity-timeout-ms".into(), "500".into()]);
    agent.spawn();
    wait_for(&s, "both phones ready again", |p| count(p, "ready") == 2).await;
    if !snap.join("identity").is_file() {
        // Not remade while the new agent took its phones over: the next cold boot makes it.
        lease_and_release(&s, &alice).await;
    }
    assert!(snap.join("identity").is_file(), "snapshotted again");
    let reset = lease_and_release(&s, &alice).await;
    assert!(
        argv_of(&state.0, &reset).starts_with("--boot-img"),
        "a silent clone is replaced by a cold boot"
    );
    assert!(!snap.exists(), "the snapshot of silent clones is deleted");
}
both!(warm_pool_clones);
