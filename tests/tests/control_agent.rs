//! Tier 2: the control service and host agent with real `cloudphone-vmm` phones.
//! lease → the phone's guest boots under our VMM → release → the phone is reset (new VMM,
//! new generation) and boots again, ready for the next user. A cloned phone answers Debian's
//! `adb` through `cloudphone adb` for its lease holder's key only, until the lease ends.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cloudphone_tests::control::{ChildGuard, ControlService};
use cloudphone_tests::{guest_kernel, scratch_dir, vmm_binary, workspace_binary, Initramfs};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(400);
const MARKER: &str = "CLOUDPHONE-GUEST-UP";

fn pid_of(state: &Path, phone_id: &str) -> Option<String> {
    std::fs::read_to_string(state.join("phones").join(phone_id).join("vmm.pid")).ok()
}

/// The uid of the jailed VMM under the supervisor `pid` (from the agent's pid file), checked
/// to run in mount, pid and net namespaces of its own, with its phone's directory in its
/// group and sticky (it may create files there but not replace the agent's).
fn jailed_uid(state: &Path, phone_id: &str, pid: &str) -> u32 {
    let pid = pid.trim();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let vmm = children
        .split_whitespace()
        .next()
        .expect("the jailed VMM under its supervisor");
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        .unwrap();
    for ns in ["mnt", "pid", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(
            theirs, ours,
            "the VMM of {phone_id} has its own {ns} namespace"
        );
    }
    use std::os::unix::fs::MetadataExt;
    let dir = std::fs::metadata(state.join("phones").join(phone_id)).unwrap();
    assert!(
        uid >= 200_000 && dir.gid() == uid && dir.uid() != uid && dir.mode() & 0o7777 == 0o1770,
        "phone uid {uid}; its directory: owner {}, group {}, mode {:o}",
        dir.uid(),
        dir.gid(),
        dir.mode()
    );
    let pid_file = std::fs::metadata(state.join("phones").join(phone_id).join("vmm.pid")).unwrap();
    assert_ne!(
        pid_file.uid(),
        uid,
        "the agent's pid file is not the phone's"
    );
    uid
}

#[test]
#[ignore = "tier 2: needs working KVM and a cloudphone-vmm that boots guests"]
fn lease_boots_a_real_phone_and_release_resets_it() {
    cloudphone_tests::loopback_up();
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
    let control = ControlService::start(&local.join("data"), &["--tick-ms", "200"]).unwrap();
    let (url, admin) = (control.url(), control.admin.clone());
    let call =
        |method: &str, path: &str, token: &str, body| control.call(method, path, token, body);
    let alice = control.add_user("alice", "user", None);
    let profile = json!({"name": "phone", "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 256, "image": "", "pool_size": 1});
    assert_eq!(call("POST", "/profiles", &admin, Some(profile)).0, 201);

    let state = local.join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let state = std::fs::canonicalize(&state).unwrap();
    let join_token = control.enrol_host("sandbox", &state.display().to_string(), 2);
    let _agent = ChildGuard(
        Command::new(&cloudphone)
            .args([
                "agent",
                "--control",
                &url,
                "--interval-ms",
                "500",
                "--max-phones",
                "2",
            ])
            // Devices the VMM gains later (gpu, input) are added here once it has them.
            .args([
                "--devices",
                &std::env::var("CLOUDPHONE_AGENT_DEVICES").unwrap_or_else(|_| "none".into()),
            ])
            .args(["--join-token", &join_token])
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
        let phones = call("GET", "/phones", &admin, None).1;
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
    let wait = |what: &str, probe: &mut dyn FnMut() -> Option<String>| {
        control.wait(what, TIMEOUT, diag, probe)
    };
    let phone_id = wait("a ready phone", &mut || {
        let p = call("GET", "/phones?state=ready", &admin, None).1;
        p.as_array()?
            .first()
            .map(|p| p["id"].as_str().unwrap().to_owned())
    });
    let (c, l) = call("POST", "/leases", &alice, Some(json!({"profile": "phone"})));
    assert_eq!(c, 201, "{l}");
    assert_eq!(l["lease"]["phone_id"], json!(phone_id));
    wait(
        "the guest's marker on the phone's serial console",
        &mut || serial(&phone_id).contains(MARKER).then(String::new),
    );
    let first_pid = pid_of(&state, &phone_id).expect("VMM pid file");
    jailed_uid(&state, &phone_id, &first_pid);

    // Release: the phone is reset (fresh VMM, next generation) and ready again.
    let (c, r) = call(
        "DELETE",
        &format!("/leases/{}", l["lease"]["id"].as_str().unwrap()),
        &alice,
        None,
    );
    assert_eq!(c, 200, "{r}");
    wait("the reset phone ready", &mut || {
        let p = call("GET", &format!("/phones/{phone_id}"), &admin, None).1;
        (p["state"] == "ready" && p["generation"] == 1).then(String::new)
    });
    let second_pid = pid_of(&state, &phone_id).expect("VMM pid file after reset");
    assert_ne!(first_pid, second_pid, "reset runs a new VMM");
    wait("the guest booted again", &mut || {
        serial(&phone_id).contains(MARKER).then(String::new)
    });
}

/// Milliseconds in the agent's "... (N ms after the VMM started)" ready report for a phone.
fn ready_ms(control: &ControlService, phone_id: &str) -> (String, u64) {
    let events = control
        .call("GET", "/audit?limit=1000", &control.admin, None)
        .1;
    let detail = events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "phone.ready" && e["target"] == phone_id)
        .max_by_key(|e| e["at_ms"].as_i64())
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_default()
        .to_owned();
    let ms = detail
        .rsplit_once(" ms after")
        .and_then(|(head, _)| head.rsplit('(').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no timing in the ready report {detail:?}"));
    (detail, ms)
}

#[test]
#[ignore = "tier 2: needs working KVM and scripts/build-test-image"]
fn second_phone_of_a_profile_is_a_clone_of_the_first() {
    use cloudphone_tests::cache_dir;
    use cloudphone_tests::phone::{difference, golden, icon_centre, screenshot_at, touch_at};
    const SIZE: (u32, u32) = (720, 1280);
    cloudphone_tests::loopback_up();
    let image = cache_dir().join("test-image");
    let dir = scratch_dir("control-agent-clone");
    let local = std::env::temp_dir().join(format!("cloudphone-agent-clone-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&local);
    std::fs::create_dir_all(&local).unwrap();
    let control = ControlService::start(&local.join("data"), &["--tick-ms", "200"]).unwrap();
    let (url, admin) = (control.url(), control.admin.clone());
    let call =
        |method: &str, path: &str, token: &str, body| control.call(method, path, token, body);
    let profile = json!({"name": "phone", "width": SIZE.0, "height": SIZE.1, "dpi": 320, "vcpus": 1, "memory_mib": 1024, "image": "", "pool_size": 1});
    let (c, p) = call("POST", "/profiles", &admin, Some(profile));
    assert_eq!(c, 201, "{p}");
    let profile_id = p["id"].as_str().unwrap().to_owned();
    let state = local.join("agent");
    std::fs::create_dir_all(&state).unwrap();
    let state = std::fs::canonicalize(&state).unwrap();
    let join_token = control.enrol_host("sandbox", &state.display().to_string(), 2);
    let agent_log = dir.join("agent.log");
    let _agent = ChildGuard(
        Command::new(workspace_binary("cloudphone"))
            .args(["agent", "--control", &url, "--interval-ms", "500"])
            .args(["--max-phones", "2", "--join-token", &join_token])
            .arg("--state-dir")
            .arg(&state)
            .arg("--vmm")
            .arg(vmm_binary())
            .arg("--boot-img")
            .arg(image.join("boot.img"))
            .arg("--vendor-boot")
            .arg(image.join("vendor_boot.img"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap())
            .spawn()
            .expect("start cloudphone agent"),
    );
    let diag = || {
        let phones = call("GET", "/phones", &admin, None).1;
        let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
        format!("phones: {phones}\nagent log:\n{log}")
    };
    let ready_other_than = |known: &[String]| {
        let p = call("GET", "/phones?state=ready", &admin, None).1;
        p.as_array()?.iter().find_map(|p| {
            let id = p["id"].as_str()?.to_owned();
            (!known.contains(&id)).then(|| (id, p["api_socket"].as_str().unwrap().to_owned()))
        })
    };

    // The first phone cold-boots to PHONE_READY and becomes the profile's snapshot.
    let (first, first_api) = control.wait("the first phone ready", TIMEOUT, diag, || {
        ready_other_than(&[])
    });
    assert!(
        state
            .join("snapshots")
            .join(&profile_id)
            .join("identity")
            .is_file(),
        "the first ready phone was snapshotted\n{}",
        diag()
    );
    let (cold_why, cold_ms) = ready_ms(&control, &first);

    // The second phone of the profile is a clone: restored, on the home screen, and it taps.
    let (c, r) = call(
        "PATCH",
        "/profiles/phone",
        &admin,
        Some(json!({"pool_size": 2})),
    );
    assert_eq!(c, 200, "{r}");
    let (second, second_api) = control.wait("the second phone ready", TIMEOUT, diag, || {
        ready_other_than(std::slice::from_ref(&first))
    });
    let pid = pid_of(&state, &second).expect("the clone's pid file");
    let argv = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
    assert!(argv.contains("--restore"), "{argv}");
    let first_pid = pid_of(&state, &first).expect("the first phone's pid file");
    assert_ne!(
        jailed_uid(&state, &first, &first_pid),
        jailed_uid(&state, &second, &pid),
        "each phone has its own uid, the clone too"
    );
    let (clone_why, clone_ms) = ready_ms(&control, &second);
    let identity = |id: &str| {
        let log = std::fs::read_to_string(state.join("phones").join(id).join("report.log"))
            .unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.starts_with("IDENTITY"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("phone {id} reported no IDENTITY:\n{log}"))
    };
    let (mine, its) = (identity(&first), identity(&second));
    eprintln!("identities: first {mine:?}, clone {its:?}");
    assert_ne!(mine, its, "the clone took an identity of its own");
    eprintln!("cold boot to ready: {cold_ms} ms ({cold_why})");
    eprintln!("clone restore to ready: {clone_ms} ms ({clone_why})");

    let home = golden(&dir, "home", SIZE, &[]);
    for (name, api) in [("first", &first_api), ("clone", &second_api)] {
        control.wait(
            &format!("the {name} phone's home screen"),
            Duration::from_secs(120),
            diag,
            || (difference(&screenshot_at(Path::new(api)), &home) < 0.01).then_some(()),
        );
    }
    let (x, y) = icon_centre("Info", SIZE);
    touch_at(Path::new(&second_api), &[(0, x, y, true)]);
    touch_at(Path::new(&second_api), &[(0, x, y, false)]);
    let report = state.join("phones").join(&second).join("report.log");
    control.wait(
        "the clone opened Info",
        Duration::from_secs(120),
        diag,
        || {
            std::fs::read_to_string(&report)
                .ok()?
                .contains("SCREEN app=info")
                .then_some(())
        },
    );
    assert!(
        difference(&screenshot_at(Path::new(&first_api)), &home) < 0.01,
        "the tap on the clone reached the first phone"
    );
    adb_through_the_tunnel(&control, &local, &diag);
    let _ = std::fs::remove_dir_all(&local);
}

/// Debian's `adb` (its own server on `server_port`, keys under `home`) with `args`: whether it
/// succeeded, and stdout + stderr.
fn adb(home: &Path, server_port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("adb")
        .env("HOME", home)
        .args(["-P", &server_port.to_string()])
        .args(args)
        .output()
        .expect("run adb (apt install adb)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A user leases a ready phone and reaches its adbd with Debian's adb through `cloudphone
/// adb`: their registered key gets a shell, a key nobody registered is refused, and after the
/// release the tunnel and the command are gone.
fn adb_through_the_tunnel(control: &ControlService, local: &Path, diag: &dyn Fn() -> String) {
    use std::io::BufRead;
    let call =
        |method: &str, path: &str, token: &str, body| control.call(method, path, token, body);
    let alice = control.add_user("alice", "user", None);
    // Two adb identities, each with its own HOME (keys) and its own adb server.
    let (mine, stranger) = (local.join("adb-alice"), local.join("adb-stranger"));
    for home in [&mine, &stranger] {
        std::fs::create_dir_all(home.join(".android")).unwrap();
        let key = home.join(".android/adbkey");
        let (made, out) = adb(home, 5037, &["keygen", &key.display().to_string()]);
        assert!(made, "adb keygen: {out}");
    }
    let public = std::fs::read_to_string(mine.join(".android/adbkey.pub")).unwrap();
    let key = public.split_whitespace().next().unwrap();
    let (c, k) = call("POST", "/keys", &alice, Some(json!({"key": key})));
    assert_eq!(c, 201, "{k}");
    let (c, l) = call("POST", "/leases", &alice, Some(json!({"profile": "phone"})));
    assert_eq!(c, 201, "{l}");
    let lease = l["lease"]["id"].as_str().unwrap().to_owned();

    let mut tunnel = ChildGuard(
        Command::new(workspace_binary("cloudphone"))
            .args(["--url", &control.url(), "--token", &alice, "adb", &lease])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cloudphone adb"),
    );
    let mut line = String::new();
    std::io::BufReader::new(tunnel.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let serial = line
        .trim()
        .strip_prefix("adb connect ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    // The registered key: connected and authorised (adbd verifies the AUTH signature).
    let (mine_port, stranger_port) = (15037, 15038);
    let shell = |home: &Path, port: u16| {
        adb(home, port, &["connect", &serial]);
        adb(
            home,
            port,
            &["-s", &serial, "shell", "echo", "hello-from-the-phone"],
        )
    };
    let echoed = control.wait("adb shell echo through the tunnel", TIMEOUT, diag, || {
        let (ok, out) = shell(&mine, mine_port);
        (ok && out.contains("hello-from-the-phone")).then_some(out)
    });
    eprintln!("adb shell through the tunnel: {}", echoed.trim());

    // A key nobody registered: never a shell.
    for _ in 0..3 {
        let (ok, out) = shell(&stranger, stranger_port);
        assert!(
            !ok && !out.contains("hello-from-the-phone"),
            "an unregistered key got a shell: {out}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let (_, devices) = adb(&stranger, stranger_port, &["devices"]);
    assert!(!devices.contains(&format!("{serial}\tdevice")), "{devices}");

    // Release: the command ends saying why, and adb loses the phone.
    let (c, r) = call("DELETE", &format!("/leases/{lease}"), &alice, None);
    assert_eq!(c, 200, "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = tunnel.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cloudphone adb outlived the lease"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tunnel.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !status.success() && stderr.contains("lease ended: released"),
        "{status}: {stderr}"
    );
    let (ok, out) = adb(
        &mine,
        mine_port,
        &["-s", &serial, "shell", "echo", "still-here"],
    );
    assert!(!ok && !out.contains("still-here"), "{out}");
    for (home, port) in [(&mine, mine_port), (&stranger, stranger_port)] {
        adb(home, port, &["kill-server"]);
    }
}
