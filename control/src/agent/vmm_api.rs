//! Minimal client for the per-VM API (HTTP/1.1 + JSON over the VMM's Unix socket).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Longest we wait for one API call: a VMM that does not answer in time is treated as down.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on a response body we read (status replies are tiny).
const MAX_BODY: usize = 1 << 20;

/// Sends one request and returns (status, body).
pub async fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(CALL_TIMEOUT, call_inner(socket, method, path, body))
        .await
        .with_context(|| {
            format!(
                "VMM API {} timed out after {CALL_TIMEOUT:?}",
                socket.display()
            )
        })?
}

async fn call_inner(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to VMM API {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))?;
    let res = sender
        .send_request(req)
        .await
        .with_context(|| format!("{method} {path} on {}", socket.display()))?;
    let status = res.status().as_u16();
    let bytes = http_body_util::Limited::new(res.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading VMM API reply: {e}"))?
        .to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// `GET /status`: the VMM's `state` field ("running", "paused", "shutting_down").
pub async fn status(socket: &Path) -> anyhow::Result<String> {
    let (code, body) = call(socket, "GET", "/status", None).await?;
    if code != 200 {
        bail!("GET /status returned {code}: {body}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("GET /status reply is not JSON")?;
    Ok(v.get("state")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown")
        .to_owned())
}

/// `PUT /shutdown` with a forced-stop deadline.
pub async fn shutdown(socket: &Path, timeout_ms: u64) -> anyhow::Result<()> {
    let (code, body) = call(
        socket,
        "PUT",
        "/shutdown",
        Some(&format!("{{\"timeout_ms\":{timeout_ms}}}")),
    )
    .await?;
    if !(200..300).contains(&code) {
        bail!("PUT /shutdown returned {code}: {body}");
    }
    Ok(())
}
