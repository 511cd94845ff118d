//! Tier 4, the whole product: `cloudphone serve` on this host, a host agent running the test
//! phone image under `cloudphone-vmm` (inside `scripts/kvm-sandbox` when this host's /dev/kvm
//! cannot boot guests, its screen relayed out over a forwarded port), and headless Chromium
//! acting as the user: log in, get a phone, watch it live, tap "Info" and see the Info page.
//! A second user can neither see that phone nor open its stream.
//!
//! With `CLOUDPHONE_TOUCH_TAPS=N` it also measures touch-to-photon in Paint from the browser
//! (pointer down → first decoded video frame showing the stroke) and prints median and p95.
//!
//! Run: `cargo test -p cloudphone-tests --test live_phone -- --ignored --nocapture` (needs the
//! release `cloudphone`/`cloudphone-vmm` via CLOUDPHONE_CLOUDPHONE/CLOUDPHONE_VMM or debug
//! builds next to the test, the test image from `scripts/build-test-image`, and chromium).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudphone_tests::control::{ChildGuard, ControlService};
use cloudphone_tests::phone::{golden, grid_distance, icon_centre, luma_grid};
use cloudphone_tests::webdriver::Browser;
use cloudphone_tests::{cache_dir, http, repo_root, scratch_dir, vmm_binary, workspace_binary};
use serde_json::{json, Value};

const SIZE: (u32, u32) = (720, 1280);
const CPUS: u32 = 2;
/// Luminance grid cell (pixels) for comparing video frames with goldens.
const CELL: u32 = 16;
/// Rows of cells covering the status bar (its clock shows the real time).
const STATUS_ROWS: usize = 3;
/// First boot of a phone in the nested sandbox is slow (TCG underneath).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
const PASSWORD: &str = "live-phone-demo-1";

/// The video's picture as a luminance grid, its size and play state, plus where the picture
/// sits in the viewport (the UI letterboxes it with `object-fit: contain`).
const PROBE: &str = r#"
const cell = arguments[0];
const v = document.querySelector("video.screen");
if (!v || !v.videoWidth) return { w: 0, hash: location.hash, text: document.body.innerText.slice(0, 300) };
const c = document.createElement("canvas");
c.width = v.videoWidth; c.height = v.videoHeight;
const ctx = c.getContext("2d", { willReadFrequently: true });
ctx.drawImage(v, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
const cols = Math.floor(c.width / cell), rows = Math.floor(c.height / cell), grid = [];
for (let r = 0; r < rows; r++) for (let k = 0; k < cols; k++) {
  let s = 0;
  for (let y = r * cell; y < (r + 1) * cell; y++) for (let x = k * cell; x < (k + 1) * cell; x++) {
    const i = (y * c.width + x) * 4;
    s += 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
  }
  grid.push(s / (cell * cell));
}
const box = v.getBoundingClientRect();
const scale = Math.min(box.width / v.videoWidth, box.height / v.videoHeight);
const pw = v.videoWidth * scale, ph = v.videoHeight * scale;
return { w: v.videoWidth, h: v.videoHeight, playing: !v.paused && v.readyState >= 2, grid, hash: location.hash,
         picture: { left: box.left + (box.width - pw) / 2, top: box.top + (box.height - ph) / 2, scale } };
"#;

/// Resolves when a decoded video frame shows a changed pixel at screen point (x, y) after the
/// next pointerdown on the video; returns milliseconds from that pointerdown's event time.
const ARM_PHOTON: &str = r#"
const [x, y] = arguments;
const v = document.querySelector("video.screen");
const c = document.createElement("canvas"); c.width = 1; c.height = 1;
const ctx = c.getContext("2d", { willReadFrequently: true });
const sample = () => { ctx.drawImage(v, x, y, 1, 1, 0, 0, 1, 1); return Array.from(ctx.getImageData(0, 0, 1, 1).data.slice(0, 3)); };
const before = sample();
window.photon = null;
v.addEventListener("pointerdown", (ev) => {
  const t0 = ev.timeStamp;
  const check = (now) => {
    const px = sample();
    if (px.some((p, i) => Math.abs(p - before[i]) > 60)) { window.photon = performance.now() - t0; return; }
    if (performance.now() - t0 > 5000) { window.photon = -1; return; }
    v.requestVideoFrameCallback(check);
  };
  v.requestVideoFrameCallback(check);
}, { once: true, capture: true });
return before;
"#;

struct Stack {
    control: ControlService,
    agent: ChildGuard,
    agent_log: PathBuf,
}

fn start_stack(dir: &std::path::Path) -> Stack {
    // SQLite wants a local filesystem; this test runs on the host, so /tmp is fine.
    let local = std::env::temp_dir().join(format!("cloudphone-live-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&local);
    let control = ControlService::start(&local.join("data"), &["--tick-ms", "300"]).unwrap();
    let profile = json!({"name": "phone-720p", "width": SIZE.0, "height": SIZE.1, "dpi": 320,
        "vcpus": CPUS, "memory_mib": 1024, "image": "", "pool_size": 1});
    let (code, body) = control.call("POST", "/profiles", &control.admin, Some(profile));
    assert_eq!(code, 201, "{body}");

    let image = cache_dir().join("test-image");
    let agent_log = dir.join("agent.log");
    let log = std::fs::File::create(&agent_log).unwrap();
    // The host key outlives a restarted sandbox (whose /tmp is fresh) in `dir`, shared with it.
    let agent_args = |control_url: &str, state: &str| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--join-token".into(),
            control.enrol_host("live", state, 16),
            "--key-file".into(),
            dir.join("host.key").display().to_string(),
            "--control".into(),
            control_url.into(),
            "--state-dir".into(),
            state.into(),
            "--devices".into(),
            "gpu,input,rng,balloon,vsock".into(),
            "--interval-ms".into(),
            "500".into(),
        ];
        for (flag, path) in [
            ("--vmm", vmm_binary()),
            ("--boot-img", image.join("boot.img")),
            ("--vendor-boot", image.join("vendor_boot.img")),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
        args
    };
    let cloudphone = workspace_binary("cloudphone");
    let kvm_usable = Command::new(repo_root().join("scripts/kvm-probe"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let agent = if kvm_usable {
        let state = local.join("agent");
        std::fs::create_dir_all(&state).unwrap();
        let state = std::fs::canonicalize(&state).unwrap();
        Command::new(&cloudphone)
            .args(agent_args(&control.url(), &state.display().to_string()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
    } else {
        // Inside the sandbox the control service is 10.0.2.100:8080 (a guest forward) and the
        // agent's relay port 7070 is forwarded back to a free loopback port here.
        let relay_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args = agent_args("http://10.0.2.100:8080", "/tmp/cloudphone-agent");
        args.extend([
            "--relay-listen".into(),
            "0.0.0.0:7070".into(),
            "--relay-url".into(),
            format!("http://127.0.0.1:{relay_port}"),
        ]);
        Command::new(repo_root().join("scripts/kvm-sandbox"))
            .env("KVM_SANDBOX_GUESTFWD", format!("8080={}", control.addr))
            .env("KVM_SANDBOX_HOSTFWD", format!("{relay_port}=7070"))
            .env("KVM_SANDBOX_TIMEOUT", "3000")
            // A crashed sandbox kernel (nested KVM under TCG, rare) takes the agent down with it;
            // a fresh sandbox brings it back, the host re-registers and the pool boots a phone.
            .env("KVM_SANDBOX_RESTARTS", "2")
            .env("KVM_SANDBOX_MEM", "3072M")
            .arg("--rw")
            .arg(dir)
            .arg("--")
            .arg(&cloudphone)
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
    };
    Stack {
        control,
        agent: ChildGuard(agent.expect("start the host agent")),
        agent_log,
    }
}

fn probe(browser: &Browser) -> Value {
    browser.script(PROBE, &[json!(CELL)]).unwrap()
}

fn grid_of(v: &Value) -> Vec<f64> {
    v["grid"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// Viewport CSS position of screen pixel `p` in the probed picture.
fn viewport_point(v: &Value, p: (u32, u32)) -> (f64, f64) {
    let pic = &v["picture"];
    let f = |k: &str| pic[k].as_f64().unwrap();
    (
        f("left") + f64::from(p.0) * f("scale"),
        f("top") + f64::from(p.1) * f("scale"),
    )
}

#[test]
#[ignore = "tier 4: needs KVM (or the sandbox), chromium and the test phone image"]
fn user_gets_a_live_phone_in_the_browser_and_taps_info() {
    let dir = scratch_dir("live-phone");
    let mut stack = start_stack(&dir);
    let s = &stack.control;
    let demo = s.add_user("demo", "user", Some(PASSWORD));
    let mallory = s.add_user("mallory", "user", Some(PASSWORD));
    let diag = || {
        let phones = s.call("GET", "/phones", &s.admin, None).1;
        let log = std::fs::read_to_string(&stack.agent_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "phones: {phones}\nagent log (last lines, newest first):\n{}",
            tail.join("\n")
        )
    };
    let booting = Instant::now();
    let agent = &mut stack.agent.0;
    s.wait("a warm phone", BOOT_TIMEOUT, diag, || {
        // An agent that is gone (its sandbox crashed more often than it is restarted) fails
        // the test now, not at the deadline.
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the host agent exited ({status})\n{}", diag());
        }
        let p = s.call("GET", "/phones?state=ready", &s.admin, None).1;
        p.as_array().filter(|a| !a.is_empty()).map(drop)
    });
    eprintln!("live: warm phone ready after {:?}", booting.elapsed());

    let home = luma_grid(&golden(&dir, "home", SIZE, &[]), CELL);
    let info = luma_grid(
        &golden(&dir, "info", SIZE, &[&format!("vcpus={CPUS}")]),
        CELL,
    );
    let cols = (SIZE.0 / CELL) as usize;
    let distances = |v: &Value| {
        let g = grid_of(v);
        (
            grid_distance(&g, &home, cols, STATUS_ROWS),
            grid_distance(&g, &info, cols, STATUS_ROWS),
        )
    };

    // Log in through the form, then "Get a phone" on the catalogue.
    let browser = Browser::start((900, 1200)).unwrap();
    browser.log_in(&s.url(), "demo", PASSWORD).unwrap();
    browser
        .wait_for(
            "the catalogue's Get a phone button",
            Duration::from_secs(30),
            (
                "const b = [...document.querySelectorAll('button')].find((b) => b.textContent === 'Get a phone');
                 if (b) { b.click(); return true; } return false;",
                &[],
            ),
            |v| v == true,
        )
        .unwrap();

    // The live view plays the phone's screen at its resolution: the home screen.
    let started = Instant::now();
    let shown = browser
        .wait_for(
            "the home screen in the video",
            Duration::from_secs(120),
            (PROBE, &[json!(CELL)]),
            |v| {
                let (h, i) = distances(v);
                v["w"] == SIZE.0 && v["h"] == SIZE.1 && v["playing"] == true && h < 12.0 && h < i
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    let (h, i) = distances(&shown);
    eprintln!(
        "live: home screen in the browser after {:?} (distance to home golden {h:.1}, to info {i:.1})",
        started.elapsed()
    );
    let phone_id = s.call("GET", "/phones?state=assigned", &s.admin, None).1[0]["id"]
        .as_str()
        .expect("the assigned phone")
        .to_owned();

    // Another user sees no such phone and cannot open its stream.
    assert_eq!(
        s.call("GET", &format!("/phones/{phone_id}"), &mallory, None)
            .0,
        404
    );
    let (code, body) = http::request_with(
        &s.addr,
        "GET",
        &format!("/api/v1/phones/{phone_id}/stream"),
        &[
            ("Authorization", &format!("Bearer {mallory}")),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .unwrap();
    assert_eq!(code, 404, "another user's stream upgrade: {body}");

    // Tap "Info" on the video: the Info page (with the profile's vCPU count) comes back.
    let (x, y) = viewport_point(&shown, icon_centre("Info", SIZE));
    let tapped = Instant::now();
    browser.tap(x, y).unwrap();
    let page = browser
        .wait_for(
            "the Info page in the video",
            Duration::from_secs(60),
            (PROBE, &[json!(CELL)]),
            |v| {
                let (h, i) = distances(v);
                i < 12.0 && i < h
            },
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", diag()));
    let (h, i) = distances(&page);
    eprintln!(
        "live: Info page in the browser {:?} after the tap (distance to info golden {i:.1}, to home {h:.1})",
        tapped.elapsed()
    );

    let shot = dir.join("live-info.png");
    std::fs::write(&shot, browser.screenshot_png().unwrap()).unwrap();
    eprintln!(
        "live: browser screenshot of the live view: {}",
        shot.display()
    );

    if let Some(taps) = std::env::var("CLOUDPHONE_TOUCH_TAPS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let photon = touch_to_photon(&browser, taps);
        // The phone's share (input accepted → its screen damage arrives: relay, VMM, guest) is
        // timed by the stream itself; the rest is the host pipeline (encode, WebRTC, decode).
        let (code, stats) = s.call(
            "GET",
            &format!("/phones/{phone_id}/stream/stats"),
            &demo,
            None,
        );
        assert_eq!(code, 200, "{stats}");
        let phone_ms = stats["input_to_damage_ms"]["p50"].as_f64().unwrap_or(0.0);
        println!(
            "touch-to-photon split (medians): phone side {phone_ms:.1} ms (n={}), host pipeline {:.1} ms, encode {:.1} ms/frame",
            stats["input_to_damage_ms"]["count"],
            photon - phone_ms,
            stats["encode_ms"]["p50"].as_f64().unwrap_or(0.0),
        );
    }
}

/// Open Paint (BACK to home, tap its icon) and time `taps` strokes from pointerdown to the
/// first decoded frame that shows them; returns the median in milliseconds.
fn touch_to_photon(browser: &Browser, taps: usize) -> f64 {
    let probe_now = || probe(browser);
    browser
        .script("document.querySelector('video.screen').dispatchEvent(new KeyboardEvent('keydown', {key: 'Escape'}));
                 document.querySelector('video.screen').dispatchEvent(new KeyboardEvent('keyup', {key: 'Escape'}));", &[])
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let v = probe_now();
    let (x, y) = viewport_point(&v, icon_centre("Paint", SIZE));
    browser.tap(x, y).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut samples = Vec::new();
    for k in 0..taps {
        // Distinct points on a grid over the canvas area, away from the status bar.
        let p = (60 + (k as u32 % 10) * 60, 200 + (k as u32 / 10 % 15) * 60);
        browser
            .script(ARM_PHOTON, &[json!(p.0), json!(p.1)])
            .unwrap();
        let (x, y) = viewport_point(&v, p);
        browser.tap(x, y).unwrap();
        let ms = browser
            .wait_for(
                "the stroke in a decoded frame",
                Duration::from_secs(10),
                ("return window.photon", &[]),
                |v| v.is_number(),
            )
            .unwrap()
            .as_f64()
            .unwrap();
        if ms >= 0.0 {
            samples.push(ms);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!samples.is_empty(), "no tap ever showed up in the video");
    samples.sort_by(f64::total_cmp);
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "touch-to-photon: {} of {taps} taps seen; median {:.1} ms, p95 {:.1} ms",
        samples.len(),
        pct(0.5),
        pct(0.95)
    );
    pct(0.5)
}
