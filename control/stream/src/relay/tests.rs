//! The relay server against the fake VMM, and the relay client against the real server and
//! against scripted hostile servers.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::client;
use super::routes;
use super::wire::{self, Decoder, Geometry, Mirror};
use crate::fake_vmm::{pattern, until, FakeVmm};
use crate::signalling::tests::serve;
use cloudphone_display::PixelFormat;
use cloudphone_vmm_api::{DamageEvent, VmmApi};

use crate::confine::Confinement;

pub(crate) const KEY: &str = "relay-test-key";

/// A relay on loopback serving `vmm` as phone `p-1`; returns its base URL.
pub(crate) async fn relay_for(vmm: &FakeVmm) -> String {
    let socket = vmm.socket.clone();
    let app = routes(
        KEY,
        Arc::new(move |id: &str| (id == "p-1").then(|| socket.clone())),
        Confinement::new(["/"]),
    );
    format!("http://{}", serve(app).await)
}

/// A loopback server answering connection `i` with `bodies[i]` (the last one repeats) as a
/// complete 200 reply, whatever was asked; counts connections.
pub(crate) async fn scripted(bodies: Vec<Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let i = seen.fetch_add(1, Ordering::SeqCst);
            let body = bodies[i.min(bodies.len() - 1)].clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, count)
}

/// A valid frames stream: preamble and one full frame of `fill` bytes.
pub(crate) fn good_stream(width: u32, height: u32, fill: u8) -> Vec<u8> {
    let g = Geometry::new(width, height, PixelFormat::B8G8R8X8).unwrap();
    let mut out = wire::preamble(g).to_vec();
    out.extend(wire::record_header(&g.full(1)));
    out.resize(out.len() + g.frame_len(), fill);
    out
}

/// How long the relay tests wait for the relay to reach a state.
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_keys_and_unknown_phones_and_passes_input_through() {
    let vmm = FakeVmm::start(8, 4);
    let url = relay_for(&vmm).await;

    let wrong = VmmApi::relay(&url, "not-the-key", "p-1").unwrap();
    let (status, body) = wrong.exchange("GET", "/framebuffer", None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body:?}");
    let err = wrong.open_stream("/frames").await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    let (status, _) = wrong
        .exchange("PUT", "/input", Some("{}".into()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        vmm.inputs().is_empty(),
        "nothing reached the VMM without the key"
    );

    let unknown = VmmApi::relay(&url, KEY, "p-2").unwrap();
    let (status, body) = unknown.exchange("GET", "/framebuffer", None).await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("p-2"));

    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    let info = api.framebuffer().await.unwrap();
    assert_eq!((info.width, info.height, info.stride), (8, 4, 32));
    assert_eq!(
        info.path.as_os_str(),
        "",
        "the agent's file path is not exposed"
    );

    api.put_input(r#"{"key":"BACK","down":true}"#.into())
        .await
        .unwrap();
    assert_eq!(
        vmm.inputs(),
        vec![r#"{"key":"BACK","down":true}"#.to_string()]
    );
    // The VMM's refusal comes back with its status and body.
    let (status, body) = api
        .exchange("PUT", "/input", Some("nope".into()))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not JSON"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_vmm_is_a_bad_gateway() {
    let app = routes(
        KEY,
        Arc::new(|_: &str| Some(std::env::temp_dir().join("no-vmm-listens-here.sock"))),
        Confinement::new(["/"]),
    );
    let url = format!("http://{}", serve(app).await);
    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    for (method, path) in [
        ("GET", "/framebuffer"),
        ("GET", "/frames"),
        ("PUT", "/input"),
    ] {
        let (status, body) = api.exchange(method, path, Some("{}".into())).await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{method} {path}");
        assert!(
            String::from_utf8_lossy(&body).contains("VMM running"),
            "{body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_gets_the_full_frame_then_each_damaged_update() {
    let vmm = FakeVmm::start(16, 8);
    let url = relay_for(&vmm).await;
    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let (tx, mut rx) = mpsc::channel(16);
    let shared = mirror.clone();
    let follower = tokio::spawn(async move { client::mirror(&api, &shared, &tx).await });

    let first = rx.recv().await.unwrap();
    assert_eq!((first.x, first.y, first.width, first.height), (0, 0, 16, 8));
    assert_eq!(crate::lock(&mirror).pixels, pattern(16, 8));
    until("the relay subscribed to damage", WAIT, || {
        vmm.subscribers() == 1
    })
    .await;

    // The guest draws: new pixels in the shared file, then a flush.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(vmm.dir.join("fb"))
        .unwrap();
    file.write_all_at(&[0xab; 16 * 8 * 4], 0).unwrap();
    vmm.damage();
    let update = rx.recv().await.unwrap();
    assert_eq!(update.seq, 1);
    assert!(crate::lock(&mirror).pixels.iter().all(|&b| b == 0xab));

    // The viewer leaving ends the VMM subscription too.
    drop(rx);
    vmm.damage();
    assert!(follower.await.unwrap().is_ok());
    until("the relay unsubscribed", WAIT, || vmm.subscribers() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_viewer_gets_merged_damage_not_a_queue() {
    const DAMAGES: u64 = 40;
    let vmm = FakeVmm::start(1280, 960); // ~4.9 MB per record
    let url = relay_for(&vmm).await;
    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    let mut body = api.open_stream("/frames").await.unwrap();
    until("the relay subscribed to damage", WAIT, || {
        vmm.subscribers() == 1
    })
    .await;
    // Nobody reads while the screen changes 40 times.
    for _ in 0..DAMAGES {
        vmm.damage();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut decoder, mut mirror, mut records) = (Decoder::new(), Mirror::default(), 0);
    while mirror.seq < DAMAGES {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the last damage arrives")
            .unwrap()
            .unwrap();
        decoder.feed(frame.data_ref().unwrap());
        while decoder.apply_next(&mut mirror).unwrap().is_some() {
            records += 1;
        }
    }
    eprintln!("slow viewer: {DAMAGES} damage events arrived as {records} records");
    assert!(records >= 2, "the full frame plus at least one update");
    assert!(
        records <= 12,
        "{records} records for {DAMAGES} damages: not merged"
    );
    assert_eq!(mirror.pixels, pattern(1280, 960));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_relays_get_an_error_not_a_panic_or_a_huge_buffer() {
    let g = Geometry::new(4, 2, PixelFormat::B8G8R8X8).unwrap();
    let good = good_stream(4, 2, 7);
    let header = |x, y, w, h| {
        wire::record_header(&DamageEvent {
            seq: 2,
            x,
            y,
            width: w,
            height: h,
        })
        .to_vec()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"<html>proxy login</html>".to_vec(), "magic"),
        (good[..good.len() - 3].to_vec(), "inside a record"),
        ([&good[..], &header(3, 1, 2, 1)].concat(), "outside"),
        (
            [&good[..], &header(0, 0, u32::MAX, u32::MAX)].concat(),
            "outside",
        ),
        (
            [&good[..], &header(u32::MAX, u32::MAX, 1, 1)].concat(),
            "outside",
        ),
        (
            [&good[..], &header(0, 0, 1, 1)[..10]].concat(),
            "inside a record",
        ),
        (
            wire::preamble(Geometry {
                width: 8192,
                height: 8192,
                ..g
            })
            .to_vec(),
            "pixels",
        ),
        (
            wire::preamble(Geometry {
                width: u32::MAX,
                ..g
            })
            .to_vec(),
            "geometry",
        ),
    ];
    for (stream, why) in cases {
        let (url, _) = scripted(vec![stream]).await;
        let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
        let mirror = Mutex::new(Mirror::default());
        let (tx, mut rx) = mpsc::channel(16);
        let err = client::mirror(&api, &mirror, &tx)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err:?} should say {why:?}");
        let m = crate::lock(&mirror);
        assert!(
            m.pixels.len() <= g.frame_len(),
            "no allocation from a refused header"
        );
        // Only complete, valid records were announced.
        while let Ok(rect) = rx.try_recv() {
            assert!(g.contains(&rect));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_stays_up_on_keepalives_and_a_silent_one_is_dropped() {
    // A real relay over an idle screen: keep-alives (every 200 ms in tests) keep a client with
    // a 1 s silence limit connected, and are not announced as damage.
    let vmm = FakeVmm::start(8, 4);
    let url = relay_for(&vmm).await;
    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    let mirror = Mutex::new(Mirror::default());
    let (tx, mut rx) = mpsc::channel(16);
    let follow = client::mirror_with_limit(&api, &mirror, &tx, Duration::from_secs(1));
    assert!(
        tokio::time::timeout(Duration::from_millis(2500), follow)
            .await
            .is_err(),
        "still following after 2.5 s of an idle screen"
    );
    assert_eq!(rx.try_recv().unwrap().width, 8, "the full frame");
    assert!(rx.try_recv().is_err(), "keep-alives are not damage");

    // A relay that goes quiet mid-stream (no keep-alives: a dead link) is given up on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let body = good_stream(4, 2, 7);
        let head = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body).await;
        let _ = stream.write_all(b"\r\n").await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    let started = Instant::now();
    let silence = Duration::from_millis(300);
    let err = client::mirror_with_limit(&api, &mirror, &tx, silence)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing for"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        rx.try_recv().unwrap().width,
        4,
        "the frame before the silence"
    );
}

/// A socket (or the framebuffer its VMM names) outside the relay's roots is refused, not
/// connected to or mapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_confinement_are_refused() {
    let vmm = FakeVmm::start(16, 8);
    let socket = vmm.socket.clone();
    let elsewhere = std::env::temp_dir().join(format!("relay-root-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let app = routes(
        KEY,
        Arc::new(move |_: &str| Some(socket.clone())),
        Confinement::new([&elsewhere]),
    );
    let url = format!("http://{}", serve(app).await);
    let api = VmmApi::relay(&url, KEY, "p-1").unwrap();
    for (method, path) in [
        ("GET", "/framebuffer"),
        ("GET", "/frames"),
        ("PUT", "/input"),
    ] {
        let (status, body) = api.exchange(method, path, Some("{}".into())).await.unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{method} {path}");
        assert!(
            String::from_utf8_lossy(&body).contains("refused"),
            "{body:?}"
        );
    }
    std::fs::remove_dir_all(&elsewhere).unwrap();
}
