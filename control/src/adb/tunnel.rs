//! `GET /api/v1/leases/{id}/adb` (WebSocket): the service end of `cloudphone adb`. The caller
//! must hold the lease (or be an operator); the phone's adbd is opened with the lease user's
//! registered keys, read now and never cached, and binary messages then carry adb bytes both
//! ways. Everything is checked before the upgrade, so a refusal is a plain HTTP error and no
//! byte reaches the phone. The tunnel closes (code 4001 and the reason) when the lease ends,
//! however it ends, through the same revocation that ends stream viewers.

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use cloudphone_stream::signalling::CLOSE_GRANT_REVOKED;
use cloudphone_stream::{Confinement, Revocation};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ADB_KEY_HEADER, ADB_UPGRADE};
use crate::api::auth::Auth;
use crate::api::error::{ApiError, ApiResult};
use crate::api::{extract, AppState};
use crate::error::Error;
use crate::model::{LeaseState, Role};
use crate::store::{adb_keys, hosts, leases, phones};

/// Largest WebSocket message taken from a client (an adb packet is at most 1 MiB of payload
/// plus its header); the socket's own buffering is bounded by it too.
const MAX_MESSAGE: usize = (1 << 20) + 64;
/// Bytes read from the phone per message sent on.
const CHUNK: usize = 64 * 1024;
/// Tunnels open at once per lease: adb needs one per device (plus a few while a client
/// reconnects); more is a flood, answered 429.
pub const MAX_TUNNELS_PER_LEASE: usize = 8;

/// How many tunnels each lease has open in this process.
#[derive(Clone, Default)]
pub struct OpenTunnels(Arc<Mutex<HashMap<String, usize>>>);

/// One open tunnel's place in [`OpenTunnels`], given back when dropped.
struct TunnelSlot {
    open: OpenTunnels,
    lease: String,
}

impl OpenTunnels {
    fn claim(&self, lease: &str) -> Result<TunnelSlot, Error> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(lease.to_owned()).or_default();
        if *count >= MAX_TUNNELS_PER_LEASE {
            return Err(Error::Throttled {
                what: format!("lease {lease} has {MAX_TUNNELS_PER_LEASE} adb tunnels open"),
                retry_after_s: 1,
            });
        }
        *count += 1;
        Ok(TunnelSlot {
            open: self.clone(),
            lease: lease.to_owned(),
        })
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.lease) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.lease);
            }
        }
    }
}

/// A byte stream to a phone's adbd: a local vsock socket or an upgraded relay connection.
trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// Routes to mount under `/api/v1`.
pub fn routes() -> Router<AppState> {
    Router::new().route("/leases/{id}/adb", get(open))
}

fn bad_gateway(why: String) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_GATEWAY,
        "phone_unreachable",
        &why,
        "retry when the phone is ready; operators: see the agent's log",
    )
}

async fn open(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let id = extract::id(&id, "ls", "lease")?.to_owned();
    // Subscribed before the lease is read: an end committed in between is not missed.
    let ends = st.db.lease_ends();
    let mut tx = st.db.begin().await?;
    let lease = leases::get(&mut tx, &id).await?;
    if lease.user_id != user.id && user.role != Role::Operator {
        return Err(Error::Forbidden(format!("lease {id} is not yours")).into());
    }
    if let Some(ended) = leases::ended_by(&mut tx, &id, crate::now_ms()).await? {
        let how = match ended {
            LeaseState::Active => "expired",
            other => other.as_str(),
        };
        return Err(Error::Forbidden(format!("lease {id} has ended ({how})")).into());
    }
    let keys: Vec<String> = adb_keys::list(&mut tx, &lease.user_id)
        .await?
        .into_iter()
        .map(|k| k.key)
        .collect();
    let phone = phones::get(&mut tx, &lease.phone_id).await?;
    let api_socket = phone.api_socket.ok_or_else(|| {
        Error::Conflict(format!(
            "phone {} has no running VMM yet; retry when it is ready",
            phone.id
        ))
    })?;
    let relay = hosts::relay(&mut tx, &phone.host_id).await?;
    let host = hosts::get(&mut tx, &phone.host_id).await?;
    drop(tx);
    let slot = st.adb_tunnels.claim(&id)?;
    let stream: Box<dyn Duplex> = match relay {
        // The phone's VMM is elsewhere: its agent's relay opens adbd with these keys.
        Some(relay) => {
            let mut api = cloudphone_vmm_api::VmmApi::relay(&relay.url, &relay.key, &phone.id)
                .map_err(|e| bad_gateway(e.to_string()))?;
            if let Some(tls) = &st.config.relay_tls {
                api = api.with_relay_tls(tls.clone());
            }
            let headers: Vec<(&str, &str)> =
                keys.iter().map(|k| (ADB_KEY_HEADER, k.as_str())).collect();
            Box::new(
                api.upgrade("/adb", ADB_UPGRADE, &headers)
                    .await
                    .map_err(|e| bad_gateway(e.to_string()))?,
            )
        }
        // A VMM on this machine: its vsock socket only under the host's state root.
        None => {
            let beside = crate::agent::vmm::vsock_socket_beside(FsPath::new(&api_socket));
            let vsock = Confinement::new([&host.state_root])
                .check_socket(&beside)
                .map_err(|e| bad_gateway(format!("phone {}: {e}", phone.id)))?;
            Box::new(
                super::phone::connect(&vsock, &super::key::for_phone(&keys)?)
                    .await
                    .map_err(|e| bad_gateway(format!("phone {}: {e:#}", phone.id)))?,
            )
        }
    };
    let revocation = crate::stream::guard_lease(st.clone(), id.clone(), ends);
    tracing::info!(lease = %id, user = %user.name, keys = keys.len(), "adb tunnel opened");
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let why = relay_bytes(socket, stream, revocation).await;
            drop(slot);
            tracing::info!(lease = %id, %why, "adb tunnel closed");
        }))
}

/// Relays until either side closes or the lease ends; returns why it stopped. Each direction
/// waits for the other end to take its bytes before reading more (bounded memory).
async fn relay_bytes(
    socket: WebSocket,
    phone: Box<dyn Duplex>,
    mut revocation: Revocation,
) -> String {
    let (mut to_client, mut from_client) = socket.split();
    let (mut from_phone, mut to_phone) = tokio::io::split(phone);
    let up = async {
        while let Some(msg) = from_client.next().await {
            match msg {
                Ok(Message::Binary(data)) => {
                    if let Err(e) = to_phone.write_all(&data).await {
                        return format!("phone closed: {e}");
                    }
                }
                Ok(Message::Close(_)) => break,
                Ok(Message::Text(_)) => return "client sent text; adb is binary".into(),
                Ok(_) => {}
                Err(e) => return format!("client connection broke: {e}"),
            }
        }
        let _ = to_phone.shutdown().await;
        "client closed".to_owned()
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from_phone.read(&mut buf).await {
                Ok(0) => return ("phone closed".to_owned(), None),
                Ok(n) => {
                    let msg = Message::Binary(buf[..n].to_vec().into());
                    if let Err(e) = to_client.send(msg).await {
                        return (format!("client connection broke: {e}"), None);
                    }
                }
                Err(e) => return (format!("phone connection broke: {e}"), None),
            }
        }
    };
    let (why, close) = tokio::select! {
        why = up => (why, None),
        (why, close) = down => (why, close),
        reason = revocation.revoked() => (reason.clone(), Some(CloseFrame {
            code: CLOSE_GRANT_REVOKED,
            reason: reason.into(),
        })),
    };
    // Futures are gone; the sender is ours again to close with the reason.
    let _ = to_client.send(Message::Close(close)).await;
    why
}
