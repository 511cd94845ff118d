//! A real browser end to end: headless Chromium (driven over chromedriver's W3C WebDriver
//! protocol) opens a page that uses the web UI's own `stream.js`/`touch.js`, negotiates through
//! the signalling WebSocket, plays the fake phone's test pattern, and clicks on the video.
//!
//! Needs Debian `chromium` + `chromium-driver`. Run with
//! `cargo test -p cloudphone-stream -- --ignored --nocapture browser`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use axum::response::Html;
use axum::routing::get;
use axum::Router;
use cloudphone_tests::webdriver::Browser;
use serde_json::Value;

use crate::fake_vmm::{FakeVmm, BANDS};
use crate::signalling::tests::{app, serve};
use crate::StreamHub;

const PAGE: &str = r#"<!doctype html>
<body style="margin:0">
<video id="v" autoplay muted playsinline style="display:block;width:320px;height:240px;object-fit:contain"></video>
<script type="module">
import { PhoneStream } from "/js/stream.js";
import { attachPointer } from "/js/touch.js";
document.cookie = "session=holder; path=/";
const v = document.getElementById("v");
const codec = new URLSearchParams(location.search).get("codec");
const s = new PhoneStream("ph-1", v, { codec, onEnded: (r) => { window.ended = r; } });
setInterval(async () => { const st = await s.stats(); if (st) window.codec = st.codec; }, 250);
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
           channel: s.channel && s.channel.readyState, codec: window.codec,
           bands: [0, 1, 2, 3].map((i) => px(c.width >> 1, Math.floor((i + 0.5) * c.height / 4))) };
};
</script>"#;

/// Blocking WebDriver calls from the async test: run them off the runtime's async threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
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
    plays_and_clicks("", "H264").await;
}

/// The fallback path: a browser that offers only VP8 gets VP8 from the server's libvpx encoder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "browser: needs chromium"]
async fn browser_that_offers_only_vp8_plays_vp8() {
    plays_and_clicks("?codec=vp8", "VP8").await;
}

/// Open the test page with `query`, expect the video in `codec` showing the test pattern, and
/// a click on the video arriving at the VMM as a touch.
async fn plays_and_clicks(query: &str, codec: &str) {
    let (width, height) = (320, 240);
    let vmm = FakeVmm::start(width, height);
    let web_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../web");
    let router = Router::new()
        .route("/stream-test.html", get(|| async { Html(PAGE) }))
        .merge(app(
            StreamHub::new(),
            vmm.socket.clone(),
            Vec::new(),
            crate::Revocation::never(),
        ))
        .merge(crate::web::routes(web_dir));
    let addr = serve(router).await;
    let browser = blocking(|| Browser::start((800, 600))).expect("start chromium");
    blocking(|| browser.open(&format!("http://{addr}/stream-test.html{query}"))).unwrap();

    // The video plays at the phone's resolution and shows the pattern's four bands.
    let started = Instant::now();
    let shown = blocking(|| {
        browser.wait_for(
            "the pattern in the video",
            Duration::from_secs(30),
            ("return window.probe ? window.probe() : null", &[]),
            |last| {
                let bands_ok = last["bands"]
                    .as_array()
                    .is_some_and(|b| b.iter().zip(BANDS).all(|(a, rgb)| close_to(a, rgb)));
                let codec_ok = last["codec"]
                    .as_str()
                    .is_some_and(|c| c.eq_ignore_ascii_case(codec));
                last["w"] == width
                    && last["h"] == height
                    && last["playing"] == true
                    && bands_ok
                    && codec_ok
            },
        )
    })
    .unwrap();
    eprintln!(
        "browser: pattern visible after {:?}: {shown}",
        started.elapsed()
    );

    // Wait for the input channel, then click at (0.75, 0.75) of the picture: the video sits at
    // the viewport origin (body margin 0), 320x240 CSS pixels.
    blocking(|| {
        browser.wait_for(
            "the input channel",
            Duration::from_secs(5),
            ("return window.probe().channel", &[]),
            |c| c == "open",
        )
    })
    .unwrap();
    blocking(|| browser.tap(240.0, 180.0)).unwrap();
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
