//! The typed client: HTTP/1.1 spoken either to the VMM's Unix socket directly or, for a phone on
//! another machine, to a host agent's relay (TCP or TLS, bearer key), which serves the same
//! calls under `/phones/{id}`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// The TLS library the relay client uses (callers build its `ClientConfig`).
pub use tokio_rustls::rustls;

use crate::{
    path, BalloonRequest, DamageEvent, FramebufferInfo, ShutdownRequest, SnapshotRequest,
    StatusReply,
};

/// A VMM that does not answer a call within this is treated as down.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Cap on a reply body (the replies we read are small JSON objects).
const DEFAULT_MAX_REPLY: usize = 64 * 1024;
/// Cap on one damage line: a longer line is not a damage event and ends the stream.
const MAX_EVENT_LINE: usize = 1024;

/// A call that failed, naming the endpoint (never the relay key) and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {detail}")]
pub struct Error {
    endpoint: String,
    detail: String,
}

/// Where the API is reached.
#[derive(Clone)]
enum Endpoint {
    /// The VMM's own socket on this machine.
    Unix(PathBuf),
    /// A host agent's relay: `authority` (host:port) over plain TCP or TLS, every path
    /// under `prefix`, with `authorization` (`Bearer <key>`) on every request.
    Relay {
        authority: String,
        prefix: String,
        authorization: String,
        tls: RelayTls,
    },
}

/// How a relay connection is secured.
#[derive(Clone)]
enum RelayTls {
    /// `http://`: plain TCP.
    Plain,
    /// `https://`: TLS to `server_name`, verified by `connector` (`None` until
    /// [`VmmApi::with_relay_tls`] gives one: every call then fails saying so).
    Https {
        server_name: ServerName<'static>,
        connector: Option<TlsConnector>,
    },
}

/// Client for one phone's VMM API (direct socket or through its host agent's relay).
#[derive(Clone)]
pub struct VmmApi {
    endpoint: Endpoint,
    timeout: Duration,
    max_reply: usize,
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
                authority,
                prefix,
                tls,
                ..
            } => {
                let scheme = match tls {
                    RelayTls::Plain => "http",
                    RelayTls::Https { .. } => "https",
                };
                write!(f, "relay {scheme}://{authority}{prefix}")
            }
        }
    }
}

/// A byte stream to the far side of an HTTP/1.1 upgrade ([`VmmApi::upgrade`]).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// An open damage subscription whose reply head has arrived (the VMM now publishes to it).
pub struct DamageStream {
    api: VmmApi,
    body: Incoming,
}

impl VmmApi {
    /// A client for the API socket at `socket` (nothing is connected yet).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self::at(Endpoint::Unix(socket.into()))
    }

    fn at(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            timeout: DEFAULT_TIMEOUT,
            max_reply: DEFAULT_MAX_REPLY,
        }
    }

    /// A client for phone `phone_id` behind the relay at `base_url`
    /// (`http[s]://host:port[/path]`), authenticated with `key`. An `https` relay also needs
    /// [`VmmApi::with_relay_tls`]; plain `http` belongs on a trusted network or a tunnel.
    pub fn relay(base_url: &str, key: &str, phone_id: &str) -> Result<Self, Error> {
        let bad = |detail: String| Error {
            endpoint: format!("relay URL {base_url:?}"),
            detail,
        };
        let expected = "expected http://host:port[/path] or https://host:port[/path]";
        let (rest, https) = match base_url.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (
                base_url
                    .strip_prefix("http://")
                    .ok_or_else(|| bad(expected.into()))?,
                false,
            ),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains(['@', ' ', '?', '#']) {
            return Err(bad(expected.into()));
        }
        let tls = if https {
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => authority,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = ServerName::try_from(host.to_owned())
                .map_err(|e| bad(format!("{host:?} is not a TLS server name: {e}")))?;
            RelayTls::Https {
                server_name,
                connector: None,
            }
        } else {
            RelayTls::Plain
        };
        if phone_id.is_empty()
            || !phone_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!(
                "phone id {phone_id:?} cannot go into a relay URL"
            )));
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("relay key must be non-empty printable ASCII".into()));
        }
        let path = path.trim_end_matches('/');
        let prefix = if path.is_empty() {
            format!("/phones/{phone_id}")
        } else {
            format!("/{path}/phones/{phone_id}")
        };
        Ok(Self::at(Endpoint::Relay {
            authority: authority.to_owned(),
            prefix,
            authorization: format!("Bearer {key}"),
            tls,
        }))
    }

    /// The same client verifying an `https` relay with `config` (its root store holds the
    /// CA that signed the agent's relay certificate). No effect on other endpoints.
    pub fn with_relay_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        if let Endpoint::Relay {
            tls: RelayTls::Https { connector, .. },
            ..
        } = &mut self.endpoint
        {
            *connector = Some(TlsConnector::from(config));
        }
        self
    }

    /// The same client with another per-call deadline (default 5 s): slow callers such as
    /// end-to-end tests under load wait longer before calling a VMM down.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client with another cap on a reply body (default 64 KiB), for large replies
    /// such as `GET /screenshot`.
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }

    /// True when this client talks to a relay rather than a local socket.
    pub fn is_relay(&self) -> bool {
        matches!(self.endpoint, Endpoint::Relay { .. })
    }

    /// `GET /status`: whether the VM runs, is paused or is shutting down.
    pub async fn status(&self) -> Result<StatusReply, Error> {
        self.get_json(path::STATUS, "a status").await
    }

    /// `PUT /shutdown`: press the power button; the VMM stops the guest after `timeout`.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        let body = ShutdownRequest {
            timeout_ms: Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        };
        let body = serde_json::to_string(&body)
            .map_err(|e| self.error(format!("encoding the shutdown body: {e}")))?;
        self.call("PUT", path::SHUTDOWN, Some(body)).await.map(drop)
    }

    /// `PUT /balloon`: how much guest memory the balloon should hold back (0 gives it all back).
    pub async fn set_balloon(&self, target_mib: u64) -> Result<(), Error> {
        let body = serde_json::to_string(&BalloonRequest { target_mib })
            .map_err(|e| self.error(format!("encoding the balloon body: {e}")))?;
        self.call("PUT", path::BALLOON, Some(body)).await.map(drop)
    }

    /// `PUT /pause`: stop the vCPUs (a snapshot needs a paused VM).
    pub async fn pause(&self) -> Result<(), Error> {
        self.call("PUT", path::PAUSE, None).await.map(drop)
    }

    /// `PUT /resume`: run the vCPUs again after [`VmmApi::pause`].
    pub async fn resume(&self) -> Result<(), Error> {
        self.call("PUT", path::RESUME, None).await.map(drop)
    }

    /// `PUT /snapshot`: write the paused VM into `dir` (which must not exist yet), for
    /// `cloudphone-vmm --restore dir`.
    pub async fn snapshot(&self, dir: &std::path::Path) -> Result<(), Error> {
        let body = serde_json::to_string(&SnapshotRequest {
            dir: dir.display().to_string(),
        })
        .map_err(|e| self.error(format!("encoding the snapshot body: {e}")))?;
        self.call("PUT", path::SNAPSHOT, Some(body)).await.map(drop)
    }

    /// `GET /framebuffer`: where the screen's pixels are and how they are laid out.
    pub async fn framebuffer(&self) -> Result<FramebufferInfo, Error> {
        self.get_json(path::FRAMEBUFFER, "a framebuffer description")
            .await
    }

    /// `PUT /input` with an already-translated body (the caller validated the events).
    pub async fn put_input(&self, body: String) -> Result<(), Error> {
        self.call("PUT", path::INPUT, Some(body)).await.map(drop)
    }

    /// Open `GET /framebuffer/events`; each damage line is sent to `sink` until the VMM closes
    /// the stream, sends garbage, or `sink` is dropped (then `Ok`).
    pub async fn damage_events(&self, sink: mpsc::Sender<DamageEvent>) -> Result<(), Error> {
        self.subscribe_damage().await?.forward(sink).await
    }

    /// Open `GET /framebuffer/events` and return once the VMM has answered: damage from then on
    /// reaches the returned stream.
    pub async fn subscribe_damage(&self) -> Result<DamageStream, Error> {
        let body = self.open_stream(path::FRAMEBUFFER_EVENTS).await?;
        Ok(DamageStream {
            api: self.clone(),
            body,
        })
    }

    /// Start a long-lived `GET` of `path` and return its body once a 2xx head arrived (for
    /// streams the typed calls do not cover, such as the relay's frames).
    pub async fn open_stream(&self, path: &str) -> Result<Incoming, Error> {
        let res = tokio::time::timeout(self.timeout, self.send("GET", path, None))
            .await
            .map_err(|_| self.late("GET", path))??;
        if !res.status().is_success() {
            let status = res.status();
            return Err(self.error(format!("GET {path} returned {status}")));
        }
        Ok(res.into_body())
    }

    /// `GET path` upgraded to `protocol` with `headers` added: once the other side answers
    /// 101, the connection is a plain byte stream both ways (the relay's adb tunnel). Any
    /// other answer is an error carrying its status and body.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
        headers: &[(&str, &str)],
    ) -> Result<Upgraded, Error> {
        let mut all = vec![("connection", "upgrade"), ("upgrade", protocol)];
        all.extend_from_slice(headers);
        let open = async {
            let res = self.send_with("GET", path, None, &all).await?;
            if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                let status = res.status();
                let body = Limited::new(res.into_body(), self.max_reply)
                    .collect()
                    .await
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                    .unwrap_or_default();
                return Err(self.error(format!("GET {path} (upgrade): {status}: {body}")));
            }
            hyper::upgrade::on(res)
                .await
                .map(TokioIo::new)
                .map_err(|e| self.error(format!("GET {path}: upgrade failed: {e}")))
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| self.late("GET", path))?
    }

    /// One raw call; the reply's status and (capped) body whatever the status. For callers
    /// that pass replies on (the relay) or test hostile bodies.
    pub async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes), Error> {
        let exchange = async {
            let res = self.send(method, path, body).await?;
            let status = res.status();
            let bytes = Limited::new(res.into_body(), self.max_reply)
                .collect()
                .await
                .map_err(|e| self.error(format!("{method} {path}: reading reply: {e}")))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.late(method, path))?
    }

    /// An error about this endpoint (callers that read streams report through it too).
    pub fn error(&self, detail: String) -> Error {
        Error {
            endpoint: self.to_string(),
            detail,
        }
    }

    fn late(&self, method: &str, path: &str) -> Error {
        self.error(format!(
            "{method} {path}: no reply within {} s",
            self.timeout.as_secs_f32()
        ))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<T, Error> {
        let body = self.call("GET", path, None).await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.error(format!("GET {path} reply is not {what}: {e}")))
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Bytes, Error> {
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
    ) -> Result<hyper::Response<Incoming>, Error> {
        self.send_with(method, path, body, &[]).await
    }

    async fn send_with(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>, Error> {
        let mut req = hyper::Request::builder()
            .method(method)
            .header("content-type", "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req = match &self.endpoint {
            Endpoint::Unix(_) => req.uri(path).header("host", "localhost"),
            Endpoint::Relay {
                authority,
                prefix,
                authorization,
                ..
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
            Endpoint::Relay { authority, tls, .. } => {
                let stream = TcpStream::connect(authority.as_str()).await.map_err(|e| {
                    self.error(format!(
                        "connect: {e} (is the host agent running with --relay-listen?)"
                    ))
                })?;
                let _ = stream.set_nodelay(true);
                match tls {
                    RelayTls::Plain => self.request(stream, req, method, path).await,
                    RelayTls::Https {
                        server_name,
                        connector,
                    } => {
                        let connector = connector.as_ref().ok_or_else(|| {
                            self.error(
                                "an https relay needs a CA to verify it (serve --relay-ca-file)"
                                    .into(),
                            )
                        })?;
                        let stream = connector
                            .connect(server_name.clone(), stream)
                            .await
                            .map_err(|e| self.error(format!("TLS handshake with the relay: {e} (is --relay-ca-file the CA of the agent's --relay-tls-cert?)")))?;
                        self.request(stream, req, method, path).await
                    }
                }
            }
        }
    }

    async fn request<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        req: hyper::Request<Full<Bytes>>,
        method: &str,
        path: &str,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.error(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| self.error(format!("{method} {path}: {e}")))
    }
}

impl DamageStream {
    /// Send each damage line to `sink` until the VMM ends the stream, sends garbage, or `sink`
    /// is dropped (then `Ok`).
    pub async fn forward(self, sink: mpsc::Sender<DamageEvent>) -> Result<(), Error> {
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
        let api = VmmApi::relay("https://relay.example:7071", "k", "p").unwrap();
        assert_eq!(api.to_string(), "relay https://relay.example:7071/phones/p");
        for (url, key, id) in [
            ("ftp://h:1", "k", "p"),
            ("https://", "k", "p"),
            ("https://bad host!:1", "k", "p"),
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
}
