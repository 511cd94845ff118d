//! The host agent's stream relay end to end (tier 1, no KVM): a real `cloudphone serve`, a
//! real agent started with `--relay-listen/--relay-url` and the fake VMM script. The agent
//! registers the relay with a random key the API never shows; with that key (read from the
//! database, as the stream authoriser does) the relay serves only this host's phones: the
//! geometry, a frames stream whose pixels follow the VMM's screen, and input that reaches the
//! VMM (whose redraw then comes back as a frame record). A StreamHub fed through the relay
//! encodes the screen, as `cloudphone serve` does for a phone whose host has a relay. The
//! same runs with the relay over TLS (`--relay-tls-cert/--relay-tls-key`, an https relay URL,
//! the CA given to the reader as `serve --relay-ca-file` does).
//!
//! The adb tunnel end to end: `cloudphone adb` → serve's WebSocket → the agent's relay (or,
//! for an agent without one, the VMM's socket beside serve) → the fake VMM's vsock, which
//! records the key preamble and echoes the adb bytes like a guest's adbd would answer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudphone_stream::relay::wire::{Decoder, Mirror};
use cloudphone_stream::webrtc::{Viewer, ViewerCommand, ViewerEvent};
use cloudphone_stream::{ScreenSource, StreamHub, ViewerOptions};
use common::pki::Pki;
use common::{api, lease_phone, ok, profile, user, Kind, Server, TempDir};
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn fake_vmm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-vmm.py")
}

/// The agent and, on drop, its fake VMMs (which outlive agents by design).
struct Agent {
    child: Child,
    state: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in std::fs::read_dir(self.state.join("phones"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let pid = std::fs::read_to_string(dir.path().join("vmm.pid")).unwrap_or_default();
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain kill(2) of a fake VMM this test's agent started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts an agent joining with `join` over the fake VMM, keeping phones in `state`, with
/// `extra` flags (the relay's).
fn start_agent(s: &Server, join: &str, state: &Path, extra: &[String]) -> Agent {
    let child = Command::new(common::bin())
        .args([
            "agent",
            "--control",
            &s.url,
            "--join-token",
            join,
            "--kernel",
            "/dev/null",
        ])
        .args(["--state-dir", &state.display().to_string()])
        .args([
            "--vmm",
            &fake_vmm().display().to_string(),
            "--interval-ms",
            "100",
        ])
        .args(["--vcpus", "8", "--memory-mib", "8192", "--max-phones", "4"])
        .args(extra)
        .env("CLOUDPHONE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start agent");
    Agent {
        child,
        state: state.to_path_buf(),
    }
}

async fn ready_phone(s: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let phones = ok(s, "GET", "/phones", &s.admin.clone(), None, 200).await;
        if let Some(p) = phones
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["state"] == "ready")
        {
            return p["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no phone became ready: {phones}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads frame records from a `/frames` response into `mirror` until `done` holds.
async fn read_until(
    res: &mut reqwest::Response,
    decoder: &mut Decoder,
    mirror: &mut Mirror,
    done: impl Fn(&Mirror) -> bool,
) {
    while !done(mirror) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .expect("a frame record within 10 s")
            .unwrap()
            .expect("the frames stream stays open");
        decoder.feed(&chunk);
        while decoder.apply_next(mirror).unwrap().is_some() {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_relay_streams_frames_and_forwards_input() {
    relay_streams_frames_and_forwards_input(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_relay_over_tls_streams_frames_and_forwards_input() {
    relay_streams_frames_and_forwards_input(Some(Pki::new())).await
}

/// The relay end to end, over TLS when given a PKI (the agent serves its server certificate,
/// every reader trusts only its CA).
async fn relay_streams_frames_and_forwards_input(pki: Option<Pki>) {
    let s = Server::start(Kind::Sqlite, &[]).await;
    profile(&s, "relayed", 1).await;
    let state = TempDir::new("agent-state");
    let root = std::fs::canonicalize(&state.0).unwrap();
    let join = common::enrol_agent_host(&s, "h1", &root.display().to_string(), 4).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let scheme = if pki.is_some() { "https" } else { "http" };
    let relay_url = format!("{scheme}://{listen}");
    let mut relay_tls: Vec<String> = Vec::new();
    if let Some(pki) = &pki {
        for (flag, file) in [
            ("--relay-tls-cert", "server.pem"),
            ("--relay-tls-key", "server.key"),
        ] {
            relay_tls.extend([flag.to_owned(), pki.path(file).display().to_string()]);
        }
    }
    relay_tls.extend([
        "--relay-listen".into(),
        listen,
        "--relay-url".into(),
        relay_url.clone(),
    ]);
    let _agent = start_agent(&s, &join, &state.0, &relay_tls);
    let phone = ready_phone(&s).await;

    // The relay is registered, but no API answer shows it.
    let hosts = ok(&s, "GET", "/hosts", &s.admin.clone(), None, 200).await;
    assert!(!hosts.to_string().contains("relay"), "{hosts}");
    let db = rusqlite::Connection::open(s.data_dir().join("cloudphone.db")).unwrap();
    let (url, key): (String, String) = db
        .query_row("SELECT relay_url, relay_key FROM hosts", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(url, relay_url);
    assert_eq!(key.len(), 64, "a 256-bit random key");

    let mut http = reqwest::Client::builder();
    if let Some(pki) = &pki {
        let ca = std::fs::read(pki.path("ca.pem")).unwrap();
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
    }
    let http = http.build().unwrap();
    let get =
        |path: String, key: &str| http.get(format!("{url}{path}")).bearer_auth(key.to_owned());
    let fb = format!("/phones/{phone}/framebuffer");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(get(fb.clone(), "wrong").send().await.unwrap()), 401);
    assert_eq!(
        status(http.get(format!("{url}{fb}")).send().await.unwrap()),
        401
    );
    assert_eq!(
        status(
            get("/phones/ph-other/framebuffer".into(), &key)
                .send()
                .await
                .unwrap()
        ),
        404
    );
    let info: Value = get(fb, &key).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(32), Some(16))
    );

    // Frames: the whole (black) screen first.
    let mut frames = get(format!("/phones/{phone}/frames"), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(frames.status().as_u16(), 200);
    let (mut decoder, mut mirror) = (Decoder::new(), Mirror::default());
    read_until(&mut frames, &mut decoder, &mut mirror, |m| {
        !m.pixels.is_empty()
    })
    .await;
    assert!(mirror.pixels.iter().all(|&b| b == 0));

    // Input goes through to the VMM, which redraws grey level 1: that comes back as a record.
    let input = |body: &'static str| {
        http.put(format!("{url}/phones/{phone}/input"))
            .bearer_auth(&key)
            .body(body)
            .send()
    };
    let touch = r#"{"touch":[{"id":0,"x":3,"y":4,"down":true}]}"#;
    assert_eq!(status(input(touch).await.unwrap()), 200);
    let inputs = state.0.join("phones").join(&phone).join("inputs.jsonl");
    assert_eq!(std::fs::read_to_string(&inputs).unwrap().trim(), touch);
    read_until(&mut frames, &mut decoder, &mut mirror, |m| m.pixels[0] == 1).await;
    assert_eq!(&mirror.pixels[..8], &[1, 1, 1, 0, 1, 1, 1, 0]);
    // The VMM's refusal comes back as is.
    let refused = input("not json").await.unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    assert!(refused.text().await.unwrap().contains("not JSON"));
    drop(frames);

    // A stream hub reading the phone through the relay encodes its screen.
    let hub = StreamHub::new();
    let (commands, mut encoded) = mpsc::channel(8);
    let (events, events_rx) = mpsc::channel(8);
    let viewer = Viewer {
        answer_sdp: String::new(),
        commands,
        events: events_rx,
        local_addr: "127.0.0.1:9".parse().unwrap(),
    };
    let mut source = ScreenSource::relay(&url, &key, &phone).unwrap();
    if let Some(pki) = &pki {
        source =
            source.with_relay_tls(cloudphone::tls::client_config(&pki.path("ca.pem")).unwrap());
    }
    let options = ViewerOptions {
        label: "alice".into(),
        can_send_input: true,
        revocation: cloudphone_stream::Revocation::never(),
    };
    let _ended = hub.attach(&phone, source, 30, viewer, options);
    events
        .send(ViewerEvent::Connected(cloudphone_stream::Codec::H264))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), encoded.recv()).await {
        Ok(Some(ViewerCommand::Frame(f))) => assert!(f.keyframe && !f.data.is_empty()),
        other => panic!(
            "expected an encoded keyframe through the relay, got {:?}",
            other.is_ok()
        ),
    }
    events
        .send(ViewerEvent::Input(
            r#"{"type":"key","key":"BACK","down":true}"#.parse().unwrap(),
        ))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&inputs).unwrap().contains("BACK") {
        assert!(
            Instant::now() < deadline,
            "the hub's input did not reach the VMM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /hosts/register` takes a relay URL and key together or not at all, checks them, and
/// no answer (register, list, get) ever contains the key.
async fn register_checks_the_relay_and_never_returns_its_key(kind: Kind) {
    let s = Server::start(kind, &[]).await;
    let (_, token) = common::join(&s, &common::enrol(&s, "h1", "/var/lib/h1", 2).await).await;
    let key = "k".repeat(32);
    let body = |extra: Value| {
        let mut b = json!({"vcpus": 4, "memory_mib": 4096, "max_phones": 2});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let long = format!("http://h:1/{}", "a".repeat(600));
    for (extra, why) in [
        (json!({"relay_url": "http://127.0.0.1:1"}), "together"),
        (json!({"relay_key": key}), "together"),
        (
            json!({"relay_url": "ftp://h:1", "relay_key": key}),
            "http://",
        ),
        (
            json!({"relay_url": "http://h:1", "relay_key": "short"}),
            "relay_key",
        ),
        (
            json!({"relay_url": "http://h:1", "relay_key": "k e y".repeat(8)}),
            "printable",
        ),
        (json!({"relay_url": long, "relay_key": key}), "512"),
    ] {
        let (status, v) = api(
            &s,
            "POST",
            "/hosts/register",
            &token,
            Some(body(extra.clone())),
        )
        .await;
        assert_eq!(status, 400, "{extra}: {v}");
        assert!(v.to_string().contains(why), "{extra}: {v} should say {why}");
    }
    let relay = json!({"relay_url": "http://10.0.0.5:7070", "relay_key": key});
    let host = ok(
        &s,
        "POST",
        "/hosts/register",
        &token,
        Some(body(relay)),
        201,
    )
    .await;
    let id = host["id"].as_str().unwrap();
    let one = ok(
        &s,
        "GET",
        &format!("/hosts/{id}"),
        &s.admin.clone(),
        None,
        200,
    )
    .await;
    let all = ok(&s, "GET", "/hosts", &s.admin.clone(), None, 200).await;
    for answer in [&host, &one, &all] {
        assert!(!answer.to_string().contains(&key), "{answer}");
    }
    // Re-registering without a relay (agent moved beside the control service) is accepted.
    ok(
        &s,
        "POST",
        "/hosts/register",
        &token,
        Some(body(json!({}))),
        201,
    )
    .await;
}
both!(register_checks_the_relay_and_never_returns_its_key);

/// Bytes sent through the tunnel and echoed back (several adb-sized packets).
const PAYLOAD: u32 = 3 << 20;
const KEY1: &str = include_str!("fixtures/adbkey1.pub");
const KEY2: &str = include_str!("fixtures/adbkey2.pub");

fn base64_of(file: &str) -> &str {
    file.split_whitespace().next().unwrap()
}

/// Opens lease `lease`'s tunnel WebSocket with `token`; the HTTP status of a refusal.
async fn tunnel_ws(
    s: &Server,
    lease: &str,
    token: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/api/v1/leases/{lease}/adb",
        s.url.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("tunnel handshake failed oddly: {e}"),
    }
}

/// `cloudphone adb LEASE` as `token`: the process and the local port it printed.
fn adb_cli(s: &Server, token: &str, lease: &str) -> (Child, u16) {
    use std::io::BufRead;
    let mut child = Command::new(common::bin())
        .args(["--url", &s.url, "--token", token, "adb", lease])
        .env("HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cloudphone adb");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("adb connect 127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (child, port)
}

/// The preambles the fake VMM's adbd stand-in received, oldest first.
fn preambles(state: &Path, phone: &str) -> Vec<String> {
    let log = state.join("phones").join(phone).join("adb-preamble.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .split_terminator("\n\n")
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adb_tunnel_through_the_agent_relay() {
    adb_tunnel(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adb_tunnel_to_a_vmm_beside_the_service() {
    adb_tunnel(false).await
}

/// Only the lease's user (or an operator) opens the tunnel; the phone is offered exactly the
/// lease user's keys; bytes pass unchanged both ways, a few MiB included; at most 8 tunnels
/// per lease are open at once; the tunnel and the
/// command end within a second or two of the release, and the lease cannot be reopened.
async fn adb_tunnel(through_relay: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(Kind::Sqlite, &[]).await;
    profile(&s, "adbphone", 1).await;
    let state = TempDir::new("agent-state");
    let root = std::fs::canonicalize(&state.0).unwrap();
    let join = common::enrol(&s, "h1", &root.display().to_string(), 4).await;
    let relay = match through_relay {
        true => {
            let listen = format!("127.0.0.1:{}", free_port());
            let url = format!("http://{listen}");
            vec!["--relay-listen".into(), listen, "--relay-url".into(), url]
        }
        false => vec![],
    };
    let _agent = start_agent(&s, &join, &root, &relay);
    let phone = ready_phone(&s).await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let (_, bob) = user(&s, "bob", "user", 1).await;
    ok(
        &s,
        "POST",
        "/keys",
        &alice,
        Some(json!({"key": base64_of(KEY1)})),
        201,
    )
    .await;
    ok(
        &s,
        "POST",
        "/keys",
        &bob,
        Some(json!({"key": base64_of(KEY2)})),
        201,
    )
    .await;
    let lease = lease_phone(&s, &alice, "adbphone").await;
    let lease_id = lease["lease"]["id"].as_str().unwrap().to_owned();
    assert_eq!(lease["lease"]["phone_id"], phone.as_str());

    // Refused before any byte reaches the phone.
    assert_eq!(tunnel_ws(&s, &lease_id, Some(&bob)).await.err(), Some(403));
    assert_eq!(tunnel_ws(&s, &lease_id, None).await.err(), Some(401));
    let unknown = "ls_0123456789abcdef";
    assert_eq!(tunnel_ws(&s, unknown, Some(&alice)).await.err(), Some(404));
    assert!(preambles(&root, &phone).is_empty());

    // An operator may open it; the phone is still offered only alice's key.
    let admin = s.admin.clone();
    drop(tunnel_ws(&s, &lease_id, Some(&admin)).await.unwrap());
    let expected = format!("CLOUDPHONE-ADB 1\nKEY {}\nEND", base64_of(KEY1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while preambles(&root, &phone).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(preambles(&root, &phone), std::slice::from_ref(&expected));

    let (cli, port) = adb_cli(&s, &alice, &lease_id);
    let mut adb = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i: u32| (i * 7 % 251) as u8).collect();
    let (mut rd, mut wr) = adb.split();
    let send = async {
        wr.write_all(&payload).await.unwrap();
    };
    let mut echoed = vec![0u8; payload.len()];
    let receive = async {
        tokio::time::timeout(Duration::from_secs(30), rd.read_exact(&mut echoed))
            .await
            .expect("the echo within 30 s")
            .unwrap();
    };
    tokio::join!(send, receive);
    assert!(echoed == payload, "3 MiB came back byte-exact");
    assert_eq!(preambles(&root, &phone), [expected.clone(), expected]);

    // A connection flood: the CLI's tunnel and 7 more are open, the next is refused.
    let mut flood = Vec::new();
    for _ in 0..7 {
        flood.push(tunnel_ws(&s, &lease_id, Some(&alice)).await.unwrap());
    }
    assert_eq!(
        tunnel_ws(&s, &lease_id, Some(&alice)).await.err(),
        Some(429)
    );
    drop(flood);

    // Release: the open connection closes and the command ends, saying why.
    let released = Instant::now();
    ok(
        &s,
        "DELETE",
        &format!("/leases/{lease_id}"),
        &alice,
        None,
        200,
    )
    .await;
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), adb.read(&mut rest))
        .await
        .expect("the tunnel closed within 2 s of the release")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing after the release");
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(released.elapsed() < Duration::from_secs(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("lease ended: released"),
        "{stderr}"
    );
    assert_eq!(
        tunnel_ws(&s, &lease_id, Some(&alice)).await.err(),
        Some(403)
    );
}
