//! A real browser end to end: headless Chromium (driven over chromedriver's W3C WebDriver
//! protocol) opens a page that uses the web UI's own `stream.js`/`touch.js`, negotiates through
//! the signalling WebSocket, plays the fake phone's test pattern, and clicks on the video.
//!
//! Needs Debian `chromium` + `chromium-driver`. Run with
//! `cargo test -p cloudphone-stream -- --ignored --nocapture browser`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::fake_vmm::{FakeVmm, BANDS};
use crate::signalling::tests::{app, serve};
use crate::StreamHub;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

const PAGE: &str = r#"<!doctype html>
<body style="margin:0">
<video id="v" autoplay muted playsinline style="display:block;width:320px;height:240px;object-fit:contain"></video>
<script type="module">
import { PhoneStream } from "/js/stream.js";
import { attachPointer } from "/js/touch.js";
document.cookie = "session=holder; path=/";
const v = document.getElementById("v");
const s = new PhoneStream("ph-1", v, { onEnded: (r) => { window.ended = r; } });
attachPointer(v, (m) => s.send(m));
window.state = "connecting";
s.connect().then(() => { window.state = "negotiated"; }, (e) => { window.state = "error: " + e.message; });
window.probe = () => {
  const c = document.createElement("canvas");
  c.width = v.videoWidth; c.height = v.videoHeight;
  if (!c.width) return { state: window.state, w: 0 };
  const ctx = c.getContext("2d");
  ctx.drawImage(v, 0, 0);
  const px = (x, y) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
  return { state: window.state, w: v.videoWidth, h: v.videoHeight, playing: !v.paused && v.readyState >= 2,
           channel: s.channel && s.channel.readyState,
           bands: [0, 1, 2, 3].map((i) => px(c.width >> 1, Math.floor((i + 0.5) * c.height / 4))) };
};
</script>"#;

/// Minimal WebDriver client over chromedriver's HTTP port.
struct Driver {
    process: Child,
    port: u16,
    session: String,
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let mut driver = Self {
            process,
            port,
            session: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.call("GET", "/status", None).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--window-size=800,600",
                "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
            ]}
        }}});
        let session = driver
            .call("POST", "/session", Some(caps))
            .await
            .expect("new browser session");
        driver.session = session["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned();
        driver
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{method} {path}: {status} {value}"));
        }
        Ok(value["value"].clone())
    }

    async fn session_call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, Some(body)).await.unwrap()
    }

    async fn script(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The browser goes with its chromedriver; both are our own children.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn close_to(actual: &Value, rgb: [u8; 3]) -> bool {
    let got: Vec<i64> = actual
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    got.len() == 3
        && got
            .iter()
            .zip(rgb)
            .all(|(g, want)| (g - i64::from(want)).abs() <= 40)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "browser: needs chromium"]
async fn browser_plays_the_phone_screen_and_clicks_become_touches() {
    let (width, height) = (320, 240);
    let vmm = FakeVmm::start(width, height);
    let web_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web");
    let router = Router::new()
        .route("/stream-test.html", get(|| async { Html(PAGE) }))
        .merge(app(StreamHub::new(), vmm.socket.clone(), Vec::new()))
        .merge(crate::web::routes(web_dir));
    let addr = serve(router).await;
    let driver = Driver::start().await;
    driver
        .session_call(
            "POST",
            "/url",
            json!({"url": format!("http://{addr}/stream-test.html")}),
        )
        .await;

    // The video plays at the phone's resolution and shows the pattern's four bands.
    let started = Instant::now();
    let mut last;
    let shown = loop {
        last = driver
            .script("return window.probe ? window.probe() : null")
            .await;
        let bands_ok = last["bands"]
            .as_array()
            .is_some_and(|b| b.iter().zip(BANDS).all(|(a, rgb)| close_to(a, rgb)));
        if last["w"] == width && last["h"] == height && last["playing"] == true && bands_ok {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(shown, "video never showed the pattern: {last}");
    eprintln!(
        "browser: pattern visible after {:?}: {last}",
        started.elapsed()
    );

    // Wait for the input channel, then click at (0.75, 0.75) of the picture.
    for _ in 0..50 {
        if driver.script("return window.probe().channel").await == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The video sits at the viewport origin (body margin 0), 320x240 CSS pixels.
    let click = json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
        {"type": "pointerMove", "origin": "viewport", "x": 240, "y": 180},
        {"type": "pointerDown", "button": 0},
        {"type": "pause", "duration": 50},
        {"type": "pointerUp", "button": 0},
    ]}]});
    driver.session_call("POST", "/actions", click).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while vmm.inputs().len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inputs: Vec<Value> = vmm
        .inputs()
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    assert!(
        inputs.len() >= 2,
        "expected touch down + up, got {inputs:?}"
    );
    let (down, up) = (
        &inputs[0]["touch"][0],
        &inputs[inputs.len() - 1]["touch"][0],
    );
    let near = |v: &Value, want: u64| v.as_u64().is_some_and(|x| x.abs_diff(want) <= 1);
    assert_eq!(down["down"], true, "{inputs:?}");
    assert!(
        near(&down["x"], 239) && near(&down["y"], 179),
        "touch at 3/4 of the screen: {inputs:?}"
    );
    assert_eq!(up["down"], false, "{inputs:?}");
    assert_eq!(down["id"], 0);
}
