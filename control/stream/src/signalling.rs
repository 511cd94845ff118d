//! WebRTC signalling for the browser: `GET /phones/{id}/stream` (mounted under `/api/v1`)
//! upgrades to a WebSocket after the control service has authorised the caller for that phone.
//!
//! Protocol (JSON text messages):
//! 1. server → `{"type":"config","iceServers":[{"urls":[..],"username":..,"credential":..}],"input":bool}`
//! 2. browser → `{"type":"offer","sdp":".."}` (recvonly video + an ordered reliable data channel
//!    named "input"; ICE gathering finished, no trickle)
//! 3. server → `{"type":"answer","sdp":".."}` or `{"type":"error","message":".."}`
//! 4. later, server → `{"type":"ended","reason":".."}` when the stream ends (lease over, phone
//!    stopped); closing the WebSocket ends the viewer's session. When the grant is revoked (its
//!    lease ended) the server then closes the WebSocket with code [`CLOSE_GRANT_REVOKED`] and the
//!    reason, at any point of the session (even before the offer).
//!
//! ICE: the server offers one host candidate on [`SignallingConfig::bind_ip`] (loopback by
//! default: set it to an address browsers can reach). Behind NAT, run coturn
//! (`turnserver --listening-port 3478 --realm cloudphone --user demo:secret --lt-cred-mech
//! --external-ip PUBLIC/PRIVATE`), set `bind_ip` to the private address coturn can reach and put
//! `{"urls":["turn:PUBLIC:3478"],"username":"demo","credential":"secret"}` in
//! [`SignallingConfig::ice_servers`]: browsers then relay through coturn to the host candidate.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::hub::{StreamHub, ViewerOptions};
use crate::revocation::Revocation;
use crate::webrtc::{start_viewer, ViewerCommand};
use crate::ScreenSource;

/// Largest signalling message accepted (an SDP offer is a few KiB).
const MAX_MESSAGE: usize = 64 * 1024;
/// How long the browser has to send its offer.
const OFFER_TIMEOUT: Duration = Duration::from_secs(30);
/// WebSocket close code (application range) for "your lease ended": the browser shows the
/// session as over instead of reconnecting to a phone that is no longer its own.
pub const CLOSE_GRANT_REVOKED: u16 = 4001;

/// What the control service allows a caller to do with one phone's stream.
#[derive(Debug, Clone)]
pub struct StreamGrant {
    /// Where the phone's screen comes from and its input goes.
    pub source: ScreenSource,
    /// True for the lease holder; operators watching get false (their input is dropped).
    pub can_send_input: bool,
    /// The device profile's frame-rate cap.
    pub fps_cap: u32,
    /// Who is watching (user name), for logs.
    pub viewer: String,
    /// Revoked by the control service when the lease this grant was made for ends: the
    /// session then ends at once and its input is dropped.
    pub revocation: Revocation,
}

/// Why a caller may not open a stream: sent as the HTTP status + JSON error before any upgrade.
#[derive(Debug, Clone)]
pub struct StreamDenied {
    /// 401 (not logged in), 404 (no such phone, or not yours: do not reveal which), ...
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
}

/// Boxed future returned by [`StreamAuthorizer::authorize`].
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<StreamGrant, StreamDenied>> + Send + 'a>>;

/// Implemented by the control service: checks the caller (session cookie or bearer token in
/// `request.headers`) against the phone's lease. Lease holder → input allowed; operator → watch
/// only; anyone else → 404.
pub trait StreamAuthorizer: Send + Sync + 'static {
    /// Decide for the upgrade request `request` on phone `phone_id` (the raw path segment;
    /// validate it).
    fn authorize<'a>(&'a self, request: &'a Parts, phone_id: &'a str) -> AuthFuture<'a>;
}

/// A STUN/TURN server as `RTCPeerConnection` takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IceServer {
    /// `stun:host:port` / `turn:host:port?transport=udp` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Signalling settings.
#[derive(Debug, Clone)]
pub struct SignallingConfig {
    /// Address of the host ICE candidate (UDP sockets are bound here): one browsers can reach.
    pub bind_ip: IpAddr,
    /// STUN/TURN servers handed to browsers.
    pub ice_servers: Vec<IceServer>,
}

impl Default for SignallingConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ice_servers: Vec::new(),
        }
    }
}

#[derive(Clone)]
struct Signalling {
    hub: StreamHub,
    auth: Arc<dyn StreamAuthorizer>,
    config: Arc<SignallingConfig>,
}

/// The signalling route `GET /phones/{id}/stream`, to be nested under `/api/v1` (it fits the
/// `extra` router of the control service's `router_with`). Works with any outer state.
pub fn routes<S: Clone + Send + Sync + 'static>(
    hub: StreamHub,
    auth: Arc<dyn StreamAuthorizer>,
    config: SignallingConfig,
) -> Router<S> {
    Router::new()
        .route("/phones/{id}/stream", get(upgrade))
        .route("/phones/{id}/stream/stats", get(stats))
        .with_state(Signalling {
            hub,
            auth,
            config: Arc::new(config),
        })
}

async fn upgrade(
    State(st): State<Signalling>,
    Path(phone): Path<String>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    if !same_origin(&parts) {
        return deny(
            StatusCode::FORBIDDEN,
            "cross-origin WebSocket refused: open the UI from this server".into(),
        );
    }
    let grant = match st.auth.authorize(&parts, &phone).await {
        Ok(grant) => grant,
        Err(denied) => return deny(denied.status, denied.message),
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| session(socket, st, phone, grant))
}

/// `GET /phones/{id}/stream/stats`: the live stream's counters and latencies (encode time,
/// input → screen damage), for whoever may watch the phone.
async fn stats(State(st): State<Signalling>, Path(phone): Path<String>, parts: Parts) -> Response {
    if let Err(denied) = st.auth.authorize(&parts, &phone).await {
        return deny(denied.status, denied.message);
    }
    match st.hub.stats(&phone) {
        Some(stats) => (
            [(header::CONTENT_TYPE, "application/json")],
            stats.snapshot().to_string(),
        )
            .into_response(),
        None => deny(
            StatusCode::NOT_FOUND,
            format!("phone {phone} has no live stream: open it in the web UI first"),
        ),
    }
}

fn deny(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// Browsers always send `Origin` on WebSocket handshakes: it must name this host, so another
/// site cannot open a stream with the user's cookie. Non-browser clients send none.
fn same_origin(parts: &Parts) -> bool {
    let Some(origin) = parts
        .headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Offer { sdp: String },
}

async fn send(socket: &mut WebSocket, value: serde_json::Value) -> bool {
    socket
        .send(Message::Text(value.to_string().into()))
        .await
        .is_ok()
}

/// Tell the viewer its grant is gone and close the WebSocket with [`CLOSE_GRANT_REVOKED`].
async fn end_revoked(socket: &mut WebSocket, phone: &str, viewer: &str, reason: String) {
    tracing::info!(%phone, %viewer, %reason, "ending a stream session: its grant was revoked");
    let _ = send(socket, json!({"type": "ended", "reason": reason})).await;
    let frame = CloseFrame {
        code: CLOSE_GRANT_REVOKED,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn session(mut socket: WebSocket, st: Signalling, phone: String, grant: StreamGrant) {
    let mut revocation = grant.revocation.clone();
    let config = json!({"type": "config", "iceServers": st.config.ice_servers, "input": grant.can_send_input});
    if !send(&mut socket, config).await {
        return;
    }
    let offer = tokio::select! {
        reason = revocation.revoked() => {
            end_revoked(&mut socket, &phone, &grant.viewer, reason).await;
            return;
        }
        offer = tokio::time::timeout(OFFER_TIMEOUT, next_offer(&mut socket)) => offer,
    };
    let offer = match offer {
        Ok(Ok(offer)) => offer,
        Ok(Err(why)) => {
            let _ = send(&mut socket, json!({"type": "error", "message": why})).await;
            return;
        }
        Err(_) => {
            let _ = send(
                &mut socket,
                json!({"type": "error", "message": "no offer within 30 s"}),
            )
            .await;
            return;
        }
    };
    let viewer = match start_viewer(&offer, st.config.bind_ip).await {
        Ok(viewer) => viewer,
        Err(e) => {
            tracing::info!(%phone, error = %e, "refusing a viewer's offer");
            let _ = send(
                &mut socket,
                json!({"type": "error", "message": e.to_string()}),
            )
            .await;
            return;
        }
    };
    let answer = viewer.answer_sdp.clone();
    let commands = viewer.commands.clone();
    let options = ViewerOptions {
        label: grant.viewer.clone(),
        can_send_input: grant.can_send_input,
        revocation: grant.revocation.clone(),
    };
    let mut ended = st
        .hub
        .attach(&phone, grant.source, grant.fps_cap, viewer, options);
    if !send(&mut socket, json!({"type": "answer", "sdp": answer})).await {
        let _ = commands.send(ViewerCommand::Close).await;
        return;
    }
    loop {
        tokio::select! {
            reason = revocation.revoked() => {
                let _ = commands.send(ViewerCommand::Close).await;
                end_revoked(&mut socket, &phone, &grant.viewer, reason).await;
                return;
            }
            reason = &mut ended => {
                let reason = reason.unwrap_or_else(|_| "stream stopped".into());
                let _ = send(&mut socket, json!({"type": "ended", "reason": reason})).await;
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let _ = commands.send(ViewerCommand::Close).await;
                    return;
                }
                Some(Ok(_)) => {} // keep-alives; nothing else is expected after the answer
            },
        }
    }
}

async fn next_offer(socket: &mut WebSocket) -> Result<String, String> {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => {
                return match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(ClientMessage::Offer { sdp }) => Ok(sdp),
                    Err(e) => Err(format!("expected {{\"type\":\"offer\",\"sdp\":..}}: {e}")),
                };
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(_)) => return Err("send the offer as a JSON text message".into()),
            Some(Err(e)) => return Err(format!("WebSocket error: {e}")),
            None => return Err("closed before the offer".into()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake_vmm::{until, FakeVmm};
    use crate::webrtc::tests::Browser;
    use futures_util::{SinkExt, StreamExt};
    use std::path::PathBuf;
    use std::time::Instant;
    use str0m::change::SdpAnswer;
    use str0m::Event;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    /// Bearer `holder` → input, `operator` → watch only, anything else → 404; every grant
    /// ends with `revocation`.
    pub(crate) struct TokenAuth {
        pub socket: PathBuf,
        pub revocation: Revocation,
    }

    impl StreamAuthorizer for TokenAuth {
        fn authorize<'a>(&'a self, request: &'a Parts, phone_id: &'a str) -> AuthFuture<'a> {
            Box::pin(async move {
                let token = request
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let cookie = request
                    .headers
                    .get(header::COOKIE)
                    .and_then(|v| v.to_str().ok());
                let who = match (token, cookie) {
                    (Some("Bearer holder"), _) | (_, Some("session=holder")) => {
                        Some(("alice", true))
                    }
                    (Some("Bearer operator"), _) => Some(("operator", false)),
                    _ => None,
                };
                match who {
                    Some((viewer, can_send_input)) if phone_id == "ph-1" => Ok(StreamGrant {
                        source: ScreenSource::local(&self.socket),
                        can_send_input,
                        fps_cap: 30,
                        viewer: viewer.into(),
                        revocation: self.revocation.clone(),
                    }),
                    _ => Err(StreamDenied {
                        status: StatusCode::NOT_FOUND,
                        message: "no such phone".into(),
                    }),
                }
            })
        }
    }

    /// Serve `app` on a loopback port; returns its address.
    pub(crate) async fn serve(app: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    pub(crate) fn app(
        hub: StreamHub,
        socket: PathBuf,
        ice_servers: Vec<IceServer>,
        revocation: Revocation,
    ) -> Router {
        let config = SignallingConfig {
            ice_servers,
            ..SignallingConfig::default()
        };
        Router::new().nest(
            "/api/v1",
            routes(hub, Arc::new(TokenAuth { socket, revocation }), config),
        )
    }

    async fn connect(addr: std::net::SocketAddr, token: &str) -> Result<Ws, String> {
        let mut req = format!("ws://{addr}/api/v1/phones/ph-1/stream")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e| e.to_string())
    }

    async fn next_json<
        S: StreamExt<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
    >(
        ws: &mut S,
    ) -> serde_json::Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let WsMessage::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// Send a test browser's offer on `ws` (past the config message) and apply the answer.
    async fn negotiate(ws: &mut Ws) -> Browser {
        let (mut browser, offer, pending) = Browser::new().await;
        let msg = json!({"type": "offer", "sdp": offer}).to_string();
        ws.send(WsMessage::Text(msg.into())).await.unwrap();
        let answer = next_json(ws).await;
        assert_eq!(answer["type"], "answer", "{answer}");
        let answer = SdpAnswer::from_sdp_string(answer["sdp"].as_str().unwrap()).unwrap();
        browser
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap();
        browser
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket_offer_answer_streams_video_and_carries_input() {
        let vmm = FakeVmm::start(64, 48);
        let hub = StreamHub::new();
        let stun = IceServer {
            urls: vec!["stun:stun.example.org:3478".into()],
            username: None,
            credential: None,
        };
        let addr = serve(app(
            hub.clone(),
            vmm.socket.clone(),
            vec![stun.clone()],
            Revocation::never(),
        ))
        .await;

        let err = connect(addr, "stranger").await.err().unwrap();
        assert!(err.contains("404"), "a stranger gets 404: {err}");

        let mut ws = connect(addr, "holder").await.unwrap();
        let config = next_json(&mut ws).await;
        assert_eq!(config["type"], "config");
        assert_eq!(
            config["iceServers"][0]["urls"][0],
            "stun:stun.example.org:3478"
        );
        assert_eq!(config["input"], true);

        let mut browser = negotiate(&mut ws).await;
        let mut decoder = openh264::decoder::Decoder::new().unwrap();
        let mut size = None;
        let mut sent_input = false;
        let started = Instant::now();
        let ok = browser
            .pump(Duration::from_secs(20), |rtc, event| {
                match event {
                    Event::ChannelOpen(id, _) => {
                        let msg = br#"{"type":"key","key":"HOME","down":true}"#;
                        sent_input = rtc.channel(id).unwrap().write(false, msg).unwrap();
                    }
                    Event::MediaData(data) => {
                        if let Ok(Some(yuv)) = decoder.decode(&data.data) {
                            use openh264::formats::YUVSource;
                            size = Some(yuv.dimensions());
                        }
                    }
                    _ => {}
                }
                size.is_some() && sent_input
            })
            .await;
        assert!(ok, "decoded={size:?} sent_input={sent_input}");
        assert_eq!(size, Some((64, 48)), "the phone's resolution");
        eprintln!("first decoded frame after {:?}", started.elapsed());
        browser
            .pump_until(Duration::from_secs(5), || !vmm.inputs().is_empty())
            .await;
        assert_eq!(vmm.inputs().len(), 1, "the holder's key reached the VMM");
        let forwarded: serde_json::Value = serde_json::from_str(&vmm.inputs()[0]).unwrap();
        assert_eq!(forwarded, json!({"key": "HOME", "down": true}));

        // Closing the WebSocket ends the viewer and, with it, the phone's stream.
        ws.close(None).await.unwrap();
        for _ in 0..200 {
            if hub.stats("ph-1").is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the stream outlived its only viewer's WebSocket");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_grant_closes_the_session_within_a_second_and_drops_later_input() {
        let vmm = FakeVmm::start(64, 48);
        let hub = StreamHub::new();
        let (revoker, revocation) = Revocation::new();
        let addr = serve(app(hub.clone(), vmm.socket.clone(), Vec::new(), revocation)).await;
        let mut ws = connect(addr, "holder").await.unwrap();
        assert_eq!(next_json(&mut ws).await["input"], true);
        let mut browser = negotiate(&mut ws).await;
        let key = br#"{"type":"key","key":"HOME","down":true}"#;
        let mut channel = None;
        let mut frames = 0;
        let ok = browser
            .pump(Duration::from_secs(20), |rtc, event| {
                match event {
                    Event::ChannelOpen(id, _) => {
                        rtc.channel(id).unwrap().write(false, key).unwrap();
                        channel = Some(id);
                    }
                    Event::MediaData(_) => frames += 1,
                    _ => {}
                }
                frames > 0 && channel.is_some()
            })
            .await;
        assert!(ok, "frames={frames} channel={channel:?}");
        assert!(
            browser
                .pump_until(Duration::from_secs(5), || vmm.inputs().len() == 1)
                .await,
            "timed out waiting for the holder's key at the VMM"
        );

        // The lease ends: the WebSocket says why and closes with 4001 within a second.
        let revoked = Instant::now();
        revoker.revoke("lease ended: released");
        let mut ended = None;
        let close = loop {
            let msg = tokio::time::timeout(Duration::from_secs(1), ws.next())
                .await
                .expect("the session outlived its grant by a second")
                .expect("a close frame before the end of the stream")
                .unwrap();
            match msg {
                WsMessage::Text(t) => {
                    ended = Some(serde_json::from_str::<serde_json::Value>(&t).unwrap())
                }
                WsMessage::Close(frame) => break frame.expect("a close code"),
                _ => {}
            }
        };
        let closed_after = revoked.elapsed();
        eprintln!("WebSocket closed {closed_after:?} after the revocation");
        assert_eq!(
            ended,
            Some(json!({"type": "ended", "reason": "lease ended: released"}))
        );
        assert_eq!(u16::from(close.code), CLOSE_GRANT_REVOKED);
        assert_eq!(close.reason.as_str(), "lease ended: released");

        // What the old holder still sends is never forwarded, and its video stops.
        let mut late_frames = 0;
        browser
            .pump(Duration::from_millis(800), |rtc, event| {
                if let Some(mut ch) = channel.and_then(|id| rtc.channel(id)) {
                    let _ = ch.write(false, key);
                }
                if let Event::MediaData(_) = event {
                    late_frames += 1;
                }
                false
            })
            .await;
        vmm.damage();
        until("the viewer left the hub", Duration::from_secs(1), || {
            hub.stats("ph-1").is_none()
        })
        .await;
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "viewer gone {:?} after the revocation",
            revoked.elapsed()
        );
        assert_eq!(
            vmm.inputs().len(),
            1,
            "input after the lease ended reached the VMM"
        );
        eprintln!("frames the old holder received after the revocation: {late_frames}");
    }

    #[tokio::test]
    async fn garbage_offer_and_cross_origin_are_refused() {
        let vmm = FakeVmm::start(16, 16);
        let addr = serve(app(
            StreamHub::new(),
            vmm.socket.clone(),
            Vec::new(),
            Revocation::never(),
        ))
        .await;
        let mut ws = connect(addr, "operator").await.unwrap();
        assert_eq!(next_json(&mut ws).await["input"], false);
        ws.send(WsMessage::Text(
            r#"{"type":"offer","sdp":"nonsense"}"#.into(),
        ))
        .await
        .unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error");
        assert!(
            reply["message"].as_str().unwrap().contains("SDP"),
            "{reply}"
        );

        let mut req = format!("ws://{addr}/api/v1/phones/ph-1/stream")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", "Bearer holder".parse().unwrap());
        req.headers_mut()
            .insert("origin", "https://evil.example".parse().unwrap());
        let err = tokio_tungstenite::connect_async(req)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("403"), "{err}");
    }
}
