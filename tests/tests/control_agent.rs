//! Tier 2: the control service and host agent with real `cloudphone-vmm` phones.
//! lease → the phone's guest boots under our VMM → release → the phone is reset (new VMM,
//! new generation) and boots again, ready for the next user.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudphone_tests::{guest_kernel, scratch_dir, vmm_binary, workspace_binary, Initramfs};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(400);
const MARKER: &str = "CLOUDPHONE-GUEST-UP";

/// Kills a child process on drop (server, agent).
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One JSON request to the control API over loopback TCP.
fn call(base: &str, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).expect("connect to control service");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let payload = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(payload).unwrap_or(Value::Null))
}

fn phone(base: &str, token: &str, id: &str) -> Value {
    call(base, "GET", &format!("/phones/{id}"), token, None).1
}

fn wait<T>(what: &str, diag: impl Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn pid_of(state: &Path, phone_id: &str) -> Option<String> {
    std::fs::read_to_string(state.join("phones").join(phone_id).join("vmm.pid")).ok()
}

#[test]
#[ignore = "tier 2: needs working KVM and a cloudphone-vmm that boots guests"]
fn lease_boots_a_real_phone_and_release_resets_it() {
    // The kvm-sandbox starts with loopback down; the control service listens on 127.0.0.1.
    let _ = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
    let kernel = guest_kernel();
    let dir: PathBuf = scratch_dir("control-agent");
    // SQLite (WAL) and Unix sockets need a local filesystem, not the sandbox's 9p share.
    let local =
        std::env::temp_dir().join(format!("cloudphone-control-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&local);
    std::fs::create_dir_all(&local).unwrap();
    let initrd = dir.join("initrd.cpio");
    Initramfs::new()
        .modules(&["virtio_pci"])
        .script(&format!("echo {MARKER}\nsleep 100000\n"))
        .build(&kernel, &initrd)
        .expect("build initramfs");
    let cloudphone = workspace_binary("cloudphone");

    let mut server = Proc(
        Command::new(&cloudphone)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap-admin",
                "admin",
                "--tick-ms",
                "200",
            ])
            .arg("--data-dir")
            .arg(local.join("data"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cloudphone serve"),
    );
    let (mut url, mut admin) = (String::new(), String::new());
    for line in BufReader::new(server.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(t) = line.split("token: ").nth(1) {
            admin = t.trim().to_owned();
        }
        if let Some(u) = line.strip_prefix("listening on ") {
            url = u.trim().to_owned();
            break;
        }
    }
    assert!(
        !url.is_empty(),
        "cloudphone serve exited before listening (see its stderr above)"
    );
    let (c, agent_user) = call(
        &url,
        "POST",
        "/users",
        &admin,
        Some(json!({"name": "sandbox-agent", "role": "agent"})),
    );
    assert_eq!(c, 201, "{agent_user}");
    let (c, u) = call(
        &url,
        "POST",
        "/users",
        &admin,
        Some(json!({"name": "alice", "role": "user"})),
    );
    assert_eq!(c, 201, "{u}");
    let alice = u["token"].as_str().unwrap().to_owned();
    let profile = json!({"name": "phone", "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "pool_size": 1});
    assert_eq!(
        call(&url, "POST", "/profiles", &admin, Some(profile)).0,
        201
    );

    let state = local.join("agent");
    let _agent = Proc(
        Command::new(&cloudphone)
            .args([
                "agent",
                "--control",
                &url,
                "--interval-ms",
                "500",
                "--name",
                "sandbox",
                "--max-phones",
                "2",
            ])
            // Devices the VMM gains later (gpu, input) are added here once it has them.
            .args([
                "--devices",
                &std::env::var("CLOUDPHONE_AGENT_DEVICES").unwrap_or_else(|_| "none".into()),
            ])
            .args(["--token", agent_user["token"].as_str().unwrap()])
            .arg("--state-dir")
            .arg(&state)
            .arg("--vmm")
            .arg(vmm_binary())
            .arg("--kernel")
            .arg(&kernel.vmlinuz)
            .arg("--initrd")
            .arg(&initrd)
            .args(["--cmdline", "console=ttyS0 panic=-1 quiet loglevel=4"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start cloudphone agent"),
    );
    let serial = |id: &str| {
        std::fs::read_to_string(state.join("phones").join(id).join("serial.log"))
            .unwrap_or_default()
    };
    let diag = || {
        let phones = call(&url, "GET", "/phones", &admin, None).1;
        let logs: Vec<String> = std::fs::read_dir(state.join("phones"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.path().display(),
                    std::fs::read_to_string(e.path().join("vmm.log")).unwrap_or_default()
                )
            })
            .collect();
        format!("phones: {phones}\nvmm logs:\n{}", logs.join("\n"))
    };

    // The warm pool boots one phone; alice leases it and its guest is up.
    let phone_id = wait("a ready phone", diag, || {
        let p = call(&url, "GET", "/phones?state=ready", &admin, None).1;
        p.as_array()?
            .first()
            .map(|p| p["id"].as_str().unwrap().to_owned())
    });
    let (c, l) = call(
        &url,
        "POST",
        "/leases",
        &alice,
        Some(json!({"profile": "phone"})),
    );
    assert_eq!(c, 201, "{l}");
    assert_eq!(l["lease"]["phone_id"], json!(phone_id));
    wait(
        "the guest's marker on the phone's serial console",
        diag,
        || serial(&phone_id).contains(MARKER).then_some(()),
    );
    let first_pid = pid_of(&state, &phone_id).expect("VMM pid file");

    // Release: the phone is reset (fresh VMM, next generation) and ready again.
    let (c, r) = call(
        &url,
        "DELETE",
        &format!("/leases/{}", l["lease"]["id"].as_str().unwrap()),
        &alice,
        None,
    );
    assert_eq!(c, 200, "{r}");
    wait("the reset phone ready", diag, || {
        let p = phone(&url, &admin, &phone_id);
        (p["state"] == "ready" && p["generation"] == 1).then_some(())
    });
    let second_pid = pid_of(&state, &phone_id).expect("VMM pid file after reset");
    assert_ne!(first_pid, second_pid, "reset runs a new VMM");
    wait("the guest booted again", diag, || {
        serial(&phone_id).contains(MARKER).then_some(())
    });
}
