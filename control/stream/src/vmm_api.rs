//! The few per-VM API calls streaming needs (HTTP/1.1 over the VMM's Unix socket, API.md):
//! `GET /framebuffer`, the `GET /framebuffer/events` damage stream, and `PUT /input`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudphone_display::FramebufferInfo;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;
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

/// Client for one VMM's API socket.
#[derive(Debug, Clone)]
pub struct VmmApi {
    socket: PathBuf,
}

impl VmmApi {
    /// A client for the API socket at `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// The socket path (for log lines).
    pub fn socket(&self) -> &Path {
        &self.socket
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
        let res = tokio::time::timeout(CALL_TIMEOUT, self.send("GET", "/framebuffer/events", None))
            .await
            .map_err(|_| self.error("GET /framebuffer/events: no reply within 5 s".into()))??;
        if !res.status().is_success() {
            let status = res.status();
            return Err(self.error(format!("GET /framebuffer/events returned {status}")));
        }
        let mut body = res.into_body();
        let mut line = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.error(format!("damage stream broke: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for &b in data.iter() {
                if b != b'\n' {
                    line.push(b);
                    if line.len() > MAX_EVENT_LINE {
                        return Err(self.error("damage line longer than 1 KiB".into()));
                    }
                    continue;
                }
                let text = std::mem::take(&mut line);
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: DamageEvent = serde_json::from_slice(&text).map_err(|e| {
                    self.error(format!(
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

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, StreamError> {
        let exchange = async {
            let res = self.send(method, path, body).await?;
            let status = res.status();
            let bytes = Limited::new(res.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| self.error(format!("{method} {path}: reading reply: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes);
                return Err(self.error(format!("{method} {path} returned {status}: {text}")));
            }
            Ok(bytes)
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| self.error(format!("{method} {path}: no reply within 5 s")))?
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<hyper::Response<Incoming>, StreamError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.error(format!("connect: {e} (is the phone's VMM running?)")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.error(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.error(format!("building {method} {path}: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.error(format!("{method} {path}: {e}")))
    }

    fn error(&self, what: String) -> StreamError {
        StreamError::Vmm(format!("{}: {what}", self.socket.display()))
    }
}
