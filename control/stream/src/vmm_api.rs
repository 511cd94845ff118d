//! The few per-VM API calls streaming needs (HTTP/1.1, vmm/API.md): `GET /framebuffer`, the
//! `GET /framebuffer/events` damage stream, and `PUT /input`. Spoken either to the VMM's Unix
//! socket directly or, for a phone on another machine, to the host agent's relay (TCP, bearer
//! key), which serves the same calls under `/phones/{id}` (see [`crate::relay`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cloudphone_display::FramebufferInfo;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;

use crate::StreamError;

/// A VMM that does not answer a call within this is treated as down.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on a reply body (the replies we read are small JSON objects).
const MAX_REPLY: usize = 64 * 1024;
/// Cap on one damage line: a longer line is not a damage event and ends the stream.
const MAX_EVENT_LINE: usize = 1024;

/// One damage event line (`{"seq":N,"x":..,"y":..,"width":..,"height":..}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct DamageEvent {
    /// The framebuffer's flush sequence number after this flush.
    pub seq: u64,
    /// Changed rectangle.
    pub x: u32,
    /// See `x`.
    pub y: u32,
    /// See `x`.
    pub width: u32,
    /// See `x`.
    pub height: u32,
}

impl DamageEvent {
    /// The smallest rectangle covering `self` and `other`, with the later sequence number
    /// (damage that piled up while a consumer was busy is sent once).
    pub fn union(self, other: DamageEvent) -> DamageEvent {
        let right = (u64::from(self.x) + u64::from(self.width))
            .max(u64::from(other.x) + u64::from(other.width));
        let bottom = (u64::from(self.y) + u64::from(self.height))
            .max(u64::from(other.y) + u64::from(other.height));
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        DamageEvent {
            seq: self.seq.max(other.seq),
            x,
            y,
            width: u32::try_from(right - u64::from(x)).unwrap_or(u32::MAX),
            height: u32::try_from(bottom - u64::from(y)).unwrap_or(u32::MAX),
        }
    }
}

/// Where the API is reached.
#[derive(Clone)]
enum Endpoint {
    /// The VMM's own socket on this machine.
    Unix(PathBuf),
    /// A host agent's relay: `authority` (host:port) over plain TCP, every path under
    /// `prefix`, with `authorization` (`Bearer <key>`) on every request.
    Relay {
        authority: String,
        prefix: String,
        authorization: String,
    },
}

/// Client for one phone's VMM API (direct socket or through its host agent's relay).
#[derive(Clone)]
pub struct VmmApi {
    endpoint: Endpoint,
}

impl fmt::Debug for VmmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the relay key.
        write!(f, "VmmApi({self})")
    }
}

impl fmt::Display for VmmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Relay {
                authority, prefix, ..
            } => write!(f, "relay http://{authority}{prefix}"),
        }
    }
}

/// An open damage subscription whose reply head has arrived (the VMM now publishes to it).
pub struct DamageStream {
    api: VmmApi,
    body: Incoming,
}

impl VmmApi {
    /// A client for the API socket at `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: Endpoint::Unix(socket.into()),
        }
    }

    /// A client for phone `phone_id` behind the relay at `base_url` (`http://host:port[/path]`),
    /// authenticated with `key`. Only plain `http` is spoken: run the relay on a trusted network
    /// or a tunnel.
    pub fn relay(base_url: &str, key: &str, phone_id: &str) -> Result<Self, StreamError> {
        let bad = |why: &str| StreamError::Vmm(format!("relay URL {base_url:?}: {why}"));
        let rest = base_url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http://host:port[/path] is supported"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
            return Err(bad("expected http://host:port[/path]"));
        }
        if phone_id.is_empty()
            || !phone_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StreamError::Vmm(format!(
                "phone id {phone_id:?} cannot go into a relay URL"
            )));
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(StreamError::Vmm(
                "relay key must be non-empty printable ASCII".into(),
            ));
        }
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() {
            format!("/phones/{phone_id}")
        } else {
            format!("/{path}/phones/{phone_id}")
        };
        Ok(Self {
            endpoint: Endpoint::Relay {
                authority: authority.to_owned(),
                prefix,
                authorization: format!("Bearer {key}"),
            },
        })
    }

    /// True when this client talks to a relay rather than a local socket.
    pub fn is_relay(&self) -> bool {
        matches!(self.endpoint, Endpoint::Relay { .. })
    }

    /// `GET /framebuffer`: where the screen's pixels are and how they are laid out.
    pub async fn framebuffer(&self) -> Result<FramebufferInfo, StreamError> {
        let body = self.call("GET", "/framebuffer", None).await?;
        serde_json::from_slice(&body).map_err(|e| {
            self.error(format!(
                "GET /framebuffer reply is not a framebuffer description: {e}"
            ))
        })
    }

    /// `PUT /input` with an already-translated body.
    pub async fn put_input(&self, body: String) -> Result<(), StreamError> {
        self.call("PUT", "/input", Some(body)).await.map(drop)
    }

    /// Open `GET /framebuffer/events`; each damage line is sent to `sink` until the VMM closes
    /// the stream, sends garbage, or `sink` is dropped (then `Ok`).
    pub async fn damage_events(&self, sink: mpsc::Sender<DamageEvent>) -> Result<(), StreamError> {
        self.subscribe_damage().await?.forward(sink).await
    }

    /// Open `GET /framebuffer/events` and return once the VMM has answered: damage from then on
    /// reaches the returned stream.
    pub async fn subscribe_damage(&self) -> Result<DamageStream, StreamError> {
        let body = self.open_stream("/framebuffer/events").await?;
        Ok(DamageStream {
            api: self.clone(),
            body,
        })
    }

    /// Start a long-lived `GET` of `path` and return its body once a 2xx head arrived.
    pub(crate) async fn open_stream(&self, path: &str) -> Result<Incoming, StreamError> {
        let res = tokio::time::timeout(CALL_TIMEOUT, self.send("GET", path, None))
            .await
            .map_err(|_| self.error(format!("GET {path}: no reply within 5 s")))??;
        if !res.status().is_success() {
            let status = res.status();
            return Err(self.error(format!("GET {path} returned {status}")));
        }
        Ok(res.into_body())
    }

    /// One call; the reply's status and (capped) body whatever the status.
    pub async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), StreamError> {
        let exchange = async {
            let res = self.send(method, path, body).await?;
            let status = res.status();
            let bytes = Limited::new(res.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| self.error(format!("{method} {path}: reading reply: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| self.error(format!("{method} {path}: no reply within 5 s")))?
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, StreamError> {
        let (status, bytes) = self.exchange(method, path, body).await?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(self.error(format!("{method} {path} returned {status}: {text}")));
        }
        Ok(bytes)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<hyper::Response<Incoming>, StreamError> {
        let mut req = hyper::Request::builder()
            .method(method)
            .header("content-type", "application/json");
        req = match &self.endpoint {
            Endpoint::Unix(_) => req.uri(path).header("host", "localhost"),
            Endpoint::Relay {
                authority,
                prefix,
                authorization,
            } => req
                .uri(format!("{prefix}{path}"))
                .header("host", authority.as_str())
                .header("authorization", authorization.as_str()),
        };
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.error(format!("building {method} {path}: {e}")))?;
        match &self.endpoint {
            Endpoint::Unix(socket) => {
                let stream = UnixStream::connect(socket).await.map_err(|e| {
                    self.error(format!("connect: {e} (is the phone's VMM running?)"))
                })?;
                self.request(stream, req, method, path).await
            }
            Endpoint::Relay { authority, .. } => {
                let stream = TcpStream::connect(authority.as_str()).await.map_err(|e| {
                    self.error(format!(
                        "connect: {e} (is the host agent running with --relay-listen?)"
                    ))
                })?;
                let _ = stream.set_nodelay(true);
                self.request(stream, req, method, path).await
            }
        }
    }

    async fn request<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        req: hyper::Request<Full<Bytes>>,
        method: &str,
        path: &str,
    ) -> Result<hyper::Response<Incoming>, StreamError> {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.error(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| self.error(format!("{method} {path}: {e}")))
    }

    pub(crate) fn error(&self, what: String) -> StreamError {
        StreamError::Vmm(format!("{self}: {what}"))
    }
}

impl DamageStream {
    /// Send each damage line to `sink` until the VMM ends the stream, sends garbage, or `sink`
    /// is dropped (then `Ok`).
    pub async fn forward(self, sink: mpsc::Sender<DamageEvent>) -> Result<(), StreamError> {
        let Self { api, mut body } = self;
        let mut line = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| api.error(format!("damage stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for &b in data.iter() {
                if b != b'\n' {
                    line.push(b);
                    if line.len() > MAX_EVENT_LINE {
                        return Err(api.error("damage line longer than 1 KiB".into()));
                    }
                    continue;
                }
                let text = std::mem::take(&mut line);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: DamageEvent = serde_json::from_slice(&text).map_err(|e| {
                    api.error(format!(
                        "bad damage line {:?}: {e}",
                        String::from_utf8_lossy(&text)
                    ))
                })?;
                if sink.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_checked_and_keys_never_printed() {
        let api = VmmApi::relay("http://10.0.2.2:7071", "s3cret", "p-1").unwrap();
        assert_eq!(api.to_string(), "relay http://10.0.2.2:7071/phones/p-1");
        assert!(!format!("{api:?}").contains("s3cret"));
        let api = VmmApi::relay("http://h:1/base/", "k", "p_2").unwrap();
        assert_eq!(api.to_string(), "relay http://h:1/base/phones/p_2");
        for (url, key, id) in [
            ("https://h:1", "k", "p"),
            ("h:1", "k", "p"),
            ("http://", "k", "p"),
            ("http://u@h:1", "k", "p"),
            ("http://h:1", "", "p"),
            ("http://h:1", "a b", "p"),
            ("http://h:1", "k", "../x"),
            ("http://h:1", "k", ""),
        ] {
            assert!(VmmApi::relay(url, key, id).is_err(), "{url} {key} {id}");
        }
    }

    #[test]
    fn union_covers_both_rects_and_keeps_the_later_seq() {
        let a = DamageEvent {
            seq: 3,
            x: 10,
            y: 5,
            width: 4,
            height: 2,
        };
        let b = DamageEvent {
            seq: 7,
            x: 2,
            y: 6,
            width: 3,
            height: 10,
        };
        assert_eq!(
            a.union(b),
            DamageEvent {
                seq: 7,
                x: 2,
                y: 5,
                width: 12,
                height: 11
            }
        );
        let huge = DamageEvent {
            seq: 1,
            x: u32::MAX,
            y: 0,
            width: u32::MAX,
            height: 1,
        };
        assert_eq!(huge.union(a).width, u32::MAX, "saturates, no overflow");
    }
}
