//! Stream sessions end with their lease (tier 1, no VMM): a viewer's WebSocket is bound to the
//! lease it was granted for and closes, with code 4001 and the reason, within a second of
//! that lease ending however it ends: released by its holder or by an operator, expired, the
//! phone lost with its host, the phone failed. The phone then goes to the next user and the
//! previous holder cannot watch it. Input after the end is dropped in the stream hub (its own
//! tests drive a WebRTC viewer and a fake VMM); here the sessions wait in signalling, where no
//! VMM is needed. Both databases, and two replicas sharing one PostgreSQL database.

mod common;

use std::time::{Duration, Instant};

use common::{lease_phone, ok, user, warm_pool, FakeHost, Kind, Server};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// The close code for "your lease ended" (`cloudphone_stream::signalling::CLOSE_GRANT_REVOKED`).
const LEASE_ENDED: u16 = 4001;
/// The most a session may outlive its lease.
const LIMIT: Duration = Duration::from_secs(1);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `phone`'s stream as `token` and reads the config message; `Err` carries the refusal.
async fn watch(s: &Server, token: &str, phone: &str) -> Result<(Ws, Value), String> {
    let url = format!(
        "{}/api/v1/phones/{phone}/stream",
        s.url.replace("http://", "ws://")
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .map_err(|e| e.to_string())?;
    let config = match ws.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected the config message, got {other:?}"),
    };
    Ok((ws, config))
}

/// Waits for the session to end; returns the "ended" reason and when (ms since the epoch) the
/// close came. Panics if it is not closed with [`LEASE_ENDED`] within `limit` of `since`.
async fn ended_within(ws: &mut Ws, since: Instant, limit: Duration) -> (String, i64) {
    let mut ended = String::new();
    loop {
        let left = limit.saturating_sub(since.elapsed());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("the session outlived its lease by {limit:?}"))
            .expect("a close frame before the stream ends")
            .expect("a clean close");
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["type"], "ended", "{v}");
                ended = v["reason"].as_str().unwrap().to_owned();
            }
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::from(LEASE_ENDED), "{frame:?}");
                assert_eq!(frame.reason.as_str(), ended, "close reason = ended reason");
                return (ended, cloudphone::now_ms());
            }
            other => panic!("unexpected {other:?} while waiting for the end"),
        }
    }
}

/// How long after lease `lease_id` ended (its stored `ended_ms`) the session closed at
/// `closed_ms`, asserting it is within [`LIMIT`] and that the lease ended as `state`.
async fn closed_after_end(s: &Server, lease_id: &str, state: &str, closed_ms: i64) -> i64 {
    let lease = ok(
        s,
        "GET",
        &format!("/leases/{lease_id}"),
        &s.admin,
        None,
        200,
    )
    .await;
    assert_eq!(lease["state"], state, "{lease}");
    let took = closed_ms - lease["ended_ms"].as_i64().unwrap();
    assert!(
        took < LIMIT.as_millis() as i64,
        "closed {took} ms after the lease ended"
    );
    took
}

/// Releases lease `lease_id` as `token` through `via` and waits for `ws` to end for it;
/// returns how long (ms) after the lease ended the session closed.
async fn release_ends(via: &Server, token: &str, lease_id: &str, ws: &mut Ws) -> i64 {
    let released = Instant::now();
    let path = format!("/leases/{lease_id}");
    ok(via, "DELETE", &path, token, None, 200).await;
    let (reason, closed) = ended_within(ws, released, LIMIT).await;
    assert_eq!(reason, "lease ended: released");
    closed_after_end(via, lease_id, "released", closed).await
}

/// Heartbeats for `host` every 150 ms until aborted (the server reaps it after 600 ms).
fn keep_alive(s: &Server, host: &FakeHost) -> tokio::task::JoinHandle<()> {
    let (url, path, token) = (
        s.url.clone(),
        format!("/api/v1/hosts/{}/heartbeat", host.id),
        host.token.clone(),
    );
    tokio::spawn(async move {
        loop {
            common::raw(
                &url,
                "POST",
                &path,
                Some(&token),
                Some(json!({"running": []}).to_string()),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

/// The pool's one phone is ready again (its last lease reaped, the phone reset) with its
/// socket reported.
async fn phone_back(s: &Server, host: &FakeHost) {
    for _ in 0..100 {
        host.converge(s).await;
        let phones = host.heartbeat(s, &[]).await;
        if phones.iter().all(|p| p["phone"]["state"] == "ready") {
            host.report_sockets(s).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the phone never became ready again");
}

async fn sessions_end_with_their_lease(kind: Kind) {
    let s = Server::start(
        kind,
        &[
            "--tick-ms",
            "50",
            "--heartbeat-timeout-ms",
            "600",
            "--lost-after-ms",
            "600",
        ],
    )
    .await;
    let (_, alice) = user(&s, "alice", "user", 1).await;
    let (_, bob) = user(&s, "bob", "user", 1).await;
    let (_, olivia) = user(&s, "olivia", "operator", 0).await;
    let host = warm_pool(&s, "host1", 1, 1).await;
    let alive = keep_alive(&s, &host);
    host.report_sockets(&s).await;

    // 1. Alice releases her lease: her viewer and an operator watching both end.
    let lease = lease_phone(&s, &alice, "pixel").await;
    let (lease_id, phone) = (
        lease["lease"]["id"].as_str().unwrap(),
        lease["lease"]["phone_id"].as_str().unwrap().to_owned(),
    );
    let (mut ws, config) = watch(&s, &alice, &phone).await.unwrap();
    assert_eq!(config["input"], true, "{config}");
    let (mut op_ws, op_config) = watch(&s, &olivia, &phone).await.unwrap();
    assert_eq!(op_config["input"], false, "{op_config}");
    let took = release_ends(&s, &alice, lease_id, &mut ws).await;
    let (_, op_closed) = ended_within(&mut op_ws, Instant::now(), LIMIT).await;
    let op_took = closed_after_end(&s, lease_id, "released", op_closed).await;
    eprintln!("{kind:?}: released by the holder: closed {took} ms after (operator's {op_took} ms)");

    // 2. An operator releases Alice's next lease.
    phone_back(&s, &host).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let lease_id = lease["lease"]["id"].as_str().unwrap();
    let (mut ws, _) = watch(&s, &alice, &phone).await.unwrap();
    let took = release_ends(&s, &olivia, lease_id, &mut ws).await;
    eprintln!("{kind:?}: released by an operator: closed {took} ms after");

    // 3. A one-second lease expires (the scheduler reaps it every 50 ms).
    phone_back(&s, &host).await;
    let body = json!({"profile": "pixel", "duration_s": 1});
    let lease = ok(&s, "POST", "/leases", &alice, Some(body), 201).await;
    let expires_ms = lease["lease"]["expires_ms"].as_i64().unwrap();
    let (mut ws, _) = watch(&s, &alice, &phone).await.unwrap();
    let left = Duration::from_millis((expires_ms - cloudphone::now_ms()).max(0) as u64);
    let (reason, closed) = ended_within(&mut ws, Instant::now(), left + LIMIT).await;
    assert_eq!(reason, "lease ended: expired");
    // Whichever sees it first ends the session: the reaper's notice or the session's own
    // re-read of the expiry time.
    let late = closed - expires_ms;
    assert!(
        (0..LIMIT.as_millis() as i64).contains(&late),
        "closed {late} ms after the expiry time"
    );
    eprintln!("{kind:?}: expired: closed {late} ms after expires_ms");

    // 4. The host goes silent: the phone is lost and the lease with it.
    phone_back(&s, &host).await;
    let lease = lease_phone(&s, &alice, "pixel").await;
    let lease_id = lease["lease"]["id"].as_str().unwrap().to_owned();
    let (mut ws, _) = watch(&s, &alice, &phone).await.unwrap();
    alive.abort();
    let silent = Instant::now();
    let (reason, closed) = ended_within(&mut ws, silent, Duration::from_millis(600) + LIMIT).await;
    assert_eq!(reason, "lease ended: lost");
    let took = closed_after_end(&s, &lease_id, "lost", closed).await;
    eprintln!("{kind:?}: host lost: closed {took} ms after the lease was lost");

    // 5. The host returns with the phone still running: reset, it goes to Bob. Alice cannot
    // watch it; Bob can, with input.
    host.heartbeat(&s, std::slice::from_ref(&phone)).await;
    keep_alive(&s, &host);
    phone_back(&s, &host).await;
    let lease = lease_phone(&s, &bob, "pixel").await;
    assert_eq!(lease["lease"]["phone_id"], phone.as_str(), "the same phone");
    let err = watch(&s, &alice, &phone)
        .await
        .expect_err("Alice is refused");
    assert!(err.contains("404"), "{err}");
    let (mut bob_ws, config) = watch(&s, &bob, &phone).await.unwrap();
    assert_eq!(config["input"], true);
    let quiet = tokio::time::timeout(Duration::from_millis(700), bob_ws.next()).await;
    assert!(
        quiet.is_err(),
        "Bob's session must not end with Alice's leases: {quiet:?}"
    );

    // 6. Bob's phone fails (its agent reports it): his lease is lost and his session ends.
    let desired = host.heartbeat(&s, &[]).await;
    let failed = Instant::now();
    let (code, v) = host.report(&s, &desired[0], "failed").await;
    assert_eq!(code, 200, "{v}");
    let (reason, closed) = ended_within(&mut bob_ws, failed, LIMIT).await;
    assert_eq!(reason, "lease ended: lost");
    let bob_lease = lease["lease"]["id"].as_str().unwrap();
    let took = closed_after_end(&s, bob_lease, "lost", closed).await;
    eprintln!("{kind:?}: phone failed: closed {took} ms after the lease was lost");
}
both!(sessions_end_with_their_lease);

/// Two replicas share one PostgreSQL database: a lease released through one ends the session
/// that the other serves, which saw no notice of it and finds out by re-reading the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_ended_on_another_replica_ends_the_session_within_a_second() {
    let database = common::pg::fresh_database().await;
    let one = Server::start(Kind::Sqlite, &["--database", &database]).await;
    let two = Server::start(Kind::Sqlite, &["--database", &database]).await;
    let (_, alice) = user(&one, "alice", "user", 1).await;
    let host = warm_pool(&one, "host1", 1, 1).await;
    keep_alive(&one, &host);
    host.report_sockets(&one).await;
    let lease = lease_phone(&one, &alice, "pixel").await;
    let (lease_id, phone) = (
        lease["lease"]["id"].as_str().unwrap(),
        lease["lease"]["phone_id"].as_str().unwrap(),
    );
    let (mut ws, _) = watch(&two, &alice, phone).await.unwrap();
    let took = release_ends(&one, &alice, lease_id, &mut ws).await;
    eprintln!("released on another replica: closed {took} ms after");
}
