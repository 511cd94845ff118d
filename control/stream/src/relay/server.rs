//! The relay server a host agent runs so a control service on another machine can stream its
//! phones (routes under `/phones/{id}`, bearer key on every request):
//! `GET /framebuffer` (the VMM's description), `GET /frames` (the [`super::wire`] stream:
//! preamble, full frame, then damaged rects read from the mapped framebuffer, and an empty
//! keep-alive record when idle) and
//! `PUT /input` (passed to the VMM, its status and body passed back).
//!
//! Damage that arrives while the viewer's socket is slow is merged into one pending rectangle
//! and sent with the pixels current at send time: a slow link sees fewer, larger updates, and
//! memory per viewer stays at one record.

use std::convert::Infallible;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;

use crate::confine::Confinement;
use cloudphone_display::{FramebufferInfo, MappedFramebuffer};
use cloudphone_vmm_api::{DamageEvent, VmmApi};
use hyper::body::{Bytes, Frame};
use serde_json::json;
use tokio::sync::mpsc;

use super::wire::{self, Geometry};
use crate::StreamError;

/// Largest input body forwarded (input messages are small JSON objects).
const MAX_INPUT: usize = 64 * 1024;
/// Damage events buffered between the VMM subscription and the sender.
const DAMAGE_QUEUE: usize = 64;
/// An idle frames stream gets an empty record this often, so the client can tell a quiet
/// screen from a dead link ([`super::wire::SILENCE_LIMIT`]).
const KEEPALIVE: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_millis(200)
} else {
    std::time::Duration::from_secs(10)
};

/// Which phones the relay serves: the API socket of a phone whose VMM runs here, `None` for
/// any other id (answered 404).
pub trait PhoneSockets: Send + Sync + 'static {
    /// The socket of phone `phone_id`, if it runs on this host.
    fn api_socket(&self, phone_id: &str) -> Option<PathBuf>;
}

impl<F: Fn(&str) -> Option<PathBuf> + Send + Sync + 'static> PhoneSockets for F {
    fn api_socket(&self, phone_id: &str) -> Option<PathBuf> {
        self(phone_id)
    }
}

#[derive(Clone)]
struct Relay {
    key: Arc<str>,
    phones: Arc<dyn PhoneSockets>,
    /// Where phones' sockets and the framebuffers their VMMs name may lie.
    confinement: Arc<Confinement>,
}

/// The relay's routes; every request must carry `Authorization: Bearer <key>`. Sockets and
/// framebuffers resolving outside `confinement` are refused (502).
pub fn routes(key: &str, phones: Arc<dyn PhoneSockets>, confinement: Confinement) -> Router {
    Router::new()
        .route("/phones/{id}/framebuffer", get(framebuffer))
        .route("/phones/{id}/frames", get(frames))
        .route("/phones/{id}/input", put(input))
        .with_state(Relay {
            key: key.into(),
            phones,
            confinement: Arc::new(confinement),
        })
}

/// A refused or failed relay call: its status and a JSON `{"error": ..}` body.
struct Fail(StatusCode, String);

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1 }).to_string();
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// The VMM behind the relay could not be reached or misbehaved.
impl From<StreamError> for Fail {
    fn from(e: StreamError) -> Self {
        Fail(StatusCode::BAD_GATEWAY, e.to_string())
    }
}

/// A failed VMM call answers 502 with the same text as any other stream error.
impl From<cloudphone_vmm_api::Error> for Fail {
    fn from(e: cloudphone_vmm_api::Error) -> Self {
        StreamError::from(e).into()
    }
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same_key(given: &[u8], key: &[u8]) -> bool {
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Whether `headers` carry `Authorization: Bearer <key>`: the check of every relay route,
/// including those the host agent adds beside these (its adb tunnel).
pub fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    same_key(given.as_bytes(), key.as_bytes())
}

/// What a request without the relay key is told (401).
pub const UNAUTHORIZED: &str =
    "missing or wrong relay key (Authorization: Bearer <key the agent registered>)";

impl Relay {
    /// The phone's VMM client; 401 for a bad key, 404 for a phone not running here.
    fn phone(&self, headers: &HeaderMap, id: &str) -> Result<VmmApi, Fail> {
        if !authorized(headers, &self.key) {
            return Err(Fail(StatusCode::UNAUTHORIZED, UNAUTHORIZED.into()));
        }
        let socket = self.phones.api_socket(id).ok_or_else(|| {
            Fail(
                StatusCode::NOT_FOUND,
                format!("phone {id} does not run on this host"),
            )
        })?;
        Ok(VmmApi::new(self.confinement.check_socket(&socket)?))
    }
}

async fn framebuffer(
    State(relay): State<Relay>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let info = relay.phone(&headers, &id)?.framebuffer().await?;
    // The file path means nothing on the other side of the relay.
    let info = FramebufferInfo {
        path: PathBuf::new(),
        ..info
    };
    let body = serde_json::to_string(&info).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn input(
    State(relay): State<Relay>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, Fail> {
    let api = relay.phone(request.headers(), &id)?;
    let body = axum::body::to_bytes(request.into_body(), MAX_INPUT)
        .await
        .map_err(|e| Fail(StatusCode::PAYLOAD_TOO_LARGE, format!("input body: {e}")))?;
    let body = String::from_utf8(body.to_vec()).map_err(|_| {
        Fail(
            StatusCode::BAD_REQUEST,
            "input body is not UTF-8 JSON".into(),
        )
    })?;
    let (status, reply) = api.exchange("PUT", "/input", Some(body)).await?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], reply).into_response())
}

async fn frames(
    State(relay): State<Relay>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Fail> {
    let api = relay.phone(&headers, &id)?;
    let source = FrameSource::open(&api, &relay.confinement).await?;
    // Subscribe before the first frame is read, so no damage falls between the two.
    let damage = api.subscribe_damage().await?;
    let (damage_tx, damage_rx) = mpsc::channel(DAMAGE_QUEUE);
    let follower = tokio::spawn(damage.forward(damage_tx));
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        if let Err(why) = source.pump(tx, damage_rx).await {
            tracing::info!(phone = %id, %why, "relay frames stream ended");
        }
        follower.abort();
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::new(ChannelBody(rx)),
    )
        .into_response())
}

/// A response body fed by a bounded channel (the sender waits while the socket is slow).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

fn viewer_gone<E>(_: E) -> String {
    "viewer disconnected".into()
}

/// One phone's mapped framebuffer, read for one frames stream.
struct FrameSource {
    info: FramebufferInfo,
    geometry: Geometry,
    map: MappedFramebuffer,
}

impl FrameSource {
    async fn open(api: &VmmApi, confinement: &Confinement) -> Result<Self, StreamError> {
        let info = api.framebuffer().await?;
        confinement.check("framebuffer", &info.path)?;
        let geometry = Geometry::of(&info).map_err(|e| api.error(e.to_string()))?;
        let map = MappedFramebuffer::open(&info).map_err(|e| api.error(e.to_string()))?;
        Ok(Self {
            info,
            geometry,
            map,
        })
    }

    /// A record of `rect` with the pixels the framebuffer holds now.
    fn record(&self, rect: &DamageEvent) -> Result<Bytes, String> {
        let rows = self
            .map
            .copy_rect(&self.info, rect.x, rect.y, rect.width, rect.height)
            .ok_or("framebuffer file is smaller than its geometry")?;
        let mut out = Vec::with_capacity(wire::RECORD_HEADER_LEN + rows.len());
        out.extend_from_slice(&wire::record_header(rect));
        out.extend_from_slice(&rows);
        Ok(out.into())
    }

    /// Preamble, full frame, then one record per (merged) damage until the viewer leaves,
    /// the VMM's damage stream ends, or the geometry changes (the client then reconnects and
    /// learns the new one).
    async fn pump(
        self,
        tx: mpsc::Sender<Bytes>,
        mut damage: mpsc::Receiver<DamageEvent>,
    ) -> Result<(), String> {
        tx.send(Bytes::copy_from_slice(&wire::preamble(self.geometry)))
            .await
            .map_err(viewer_gone)?;
        let mut pending = Some(self.geometry.full(self.info.seq));
        let merge = |pending: Option<DamageEvent>, event: Option<DamageEvent>| {
            let event = event.ok_or("the VMM's damage stream ended")?;
            Ok::<_, String>(Some(pending.map_or(event, |p| p.union(event))))
        };
        loop {
            let permit = loop {
                if pending.is_some() {
                    tokio::select! {
                        biased;
                        permit = tx.reserve() => break permit.map_err(viewer_gone)?,
                        event = damage.recv() => pending = merge(pending, event)?,
                    }
                } else {
                    tokio::select! {
                        _ = tx.closed() => return Ok(()),
                        event = damage.recv() => pending = merge(pending, event)?,
                        _ = tokio::time::sleep(KEEPALIVE) => {
                            let idle = wire::record_header(&wire::keepalive());
                            tx.send(Bytes::copy_from_slice(&idle)).await.map_err(viewer_gone)?;
                        }
                    }
                }
            };
            while let Ok(event) = damage.try_recv() {
                pending = merge(pending, Some(event))?;
            }
            let rect = pending.take().expect("set before a permit is taken");
            if !self.geometry.contains(&rect) {
                return Err("damage outside the screen: geometry changed".into());
            }
            permit.send(self.record(&rect)?);
        }
    }
}
