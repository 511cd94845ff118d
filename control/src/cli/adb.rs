//! `cloudphone adb LEASE`: a local TCP port for `adb connect 127.0.0.1:PORT`. Each TCP
//! connection becomes a WebSocket to the service's `/leases/{id}/adb` (the user's token, TLS
//! when the URL is https), whose binary messages carry the adb bytes. The command ends, and
//! every connection with it, when the service refuses the lease or closes a tunnel because the
//! lease ended.

use std::sync::Arc;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::model::{Lease, LeaseState};

/// Bytes read from the adb client per message sent on.
const CHUNK: usize = 64 * 1024;
/// Largest message taken from the service (one adb packet and some).
const MAX_MESSAGE: usize = (1 << 20) + 64;
/// The service's close code for "the lease ended" (as for stream viewers).
const LEASE_ENDED: u16 = 4001;

/// Where and how to reach the service's tunnel for one lease.
pub struct Target {
    /// Service URL (`http[s]://host:port`).
    pub url: String,
    pub token: String,
    /// Verifies an https service (`--ca-file`).
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    pub lease_id: String,
}

/// A byte stream to the service: plain TCP or TLS.
trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// Checks the lease, listens on 127.0.0.1:`port` (0: any free port), prints the `adb connect`
/// line and tunnels every connection until the lease ends or the service refuses it.
pub async fn run(client: &crate::client::Client, target: Target, port: u16) -> anyhow::Result<()> {
    let lease: Lease = client
        .get(&format!("/leases/{}", target.lease_id))
        .await
        .with_context(|| format!("looking up lease {}", target.lease_id))?;
    if lease.state != LeaseState::Active {
        bail!("lease {} has ended ({})", lease.id, lease.state.as_str());
    }
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    let local = listener.local_addr()?;
    println!("adb connect {local}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let target = Arc::new(target);
    // A tunnel that learns the lease is over (or never usable) says so here.
    let (fatal_tx, mut fatal) = mpsc::channel::<String>(1);
    loop {
        tokio::select! {
            why = fatal.recv() => bail!("adb tunnel closed: {}", why.unwrap_or_default()),
            accepted = listener.accept() => {
                let (tcp, peer) = accepted.context("accepting an adb connection")?;
                let _ = tcp.set_nodelay(true);
                let (target, fatal_tx) = (target.clone(), fatal_tx.clone());
                tokio::spawn(async move {
                    match tunnel(&target, tcp).await {
                        Ok(None) => tracing::debug!(%peer, "adb connection closed"),
                        Ok(Some(fatal)) => { let _ = fatal_tx.send(fatal).await; }
                        Err(e) => eprintln!("adb connection from {peer}: {e:#}"),
                    }
                });
            }
        }
    }
}

/// Opens the WebSocket for one connection (TLS when the URL is https).
async fn open(
    target: &Target,
) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Duplex>>, TunnelError> {
    let ws_url = format!(
        "{}/api/v1/leases/{}/adb",
        target
            .url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1),
        target.lease_id
    );
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| TunnelError::Other(anyhow::anyhow!("bad service URL {ws_url}: {e}")))?;
    let auth = format!("Bearer {}", target.token)
        .parse()
        .map_err(|_| TunnelError::Other(anyhow::anyhow!("the token is not a valid header")))?;
    request.headers_mut().insert("authorization", auth);
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or("127.0.0.1").to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to the service at {host}:{port}"))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Duplex> = match (uri.scheme_str(), &target.tls) {
        (Some("wss"), Some(tls)) => {
            let name = rustls_pki_types::ServerName::try_from(host.clone())
                .with_context(|| format!("{host} is not a valid TLS server name"))?;
            Box::new(
                tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake with the service (is --ca-file its CA?)")?,
            )
        }
        (Some("wss"), None) => {
            return Err(TunnelError::Other(anyhow::anyhow!(
                "an https service needs --ca-file (env CLOUDPHONE_CA_FILE)"
            )))
        }
        _ => Box::new(tcp),
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(res)) => {
            let status = res.status();
            let body = res
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let why = format!("the service refused the tunnel: {status} {body}");
            // A refused lease or caller will not change by retrying: stop.
            if status.is_client_error() {
                Err(TunnelError::Fatal(why))
            } else {
                Err(TunnelError::Other(anyhow::anyhow!(why)))
            }
        }
        Err(e) => Err(TunnelError::Other(anyhow::anyhow!(
            "opening the tunnel WebSocket: {e}"
        ))),
    }
}

enum TunnelError {
    /// The lease is unusable for good: the command ends.
    Fatal(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for TunnelError {
    fn from(e: anyhow::Error) -> Self {
        TunnelError::Other(e)
    }
}

/// Relays one adb connection; `Some(reason)` when the service ended it for good.
async fn tunnel(target: &Target, tcp: TcpStream) -> anyhow::Result<Option<String>> {
    let ws = match open(target).await {
        Ok(ws) => ws,
        Err(TunnelError::Fatal(why)) => return Ok(Some(why)),
        Err(TunnelError::Other(e)) => return Err(e),
    };
    let (mut to_service, mut from_service) = ws.split();
    let (mut from_adb, mut to_adb) = tcp.into_split();
    let up = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from_adb.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = Message::Binary(buf[..n].to_vec().into());
                    if to_service.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to_service.send(Message::Close(None)).await;
        None
    };
    let down = async {
        while let Some(msg) = from_service.next().await {
            match msg {
                Ok(Message::Binary(data)) => {
                    if to_adb.write_all(&data).await.is_err() {
                        return None;
                    }
                }
                Ok(Message::Close(Some(frame))) if frame.code == CloseCode::from(LEASE_ENDED) => {
                    return Some(frame.reason.to_string());
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    };
    let ended = tokio::select! {
        ended = up => ended,
        ended = down => ended,
    };
    Ok(ended)
}
