//! The agent's stream relay (`--relay-listen`): serves the screens and input of the phones
//! running here to a control service that cannot reach their VMM sockets and shared-memory
//! framebuffers (the agent runs on another machine or inside a VM). The protocol is
//! `cloudphone_stream::relay`; this module owns the listener, the key and the phone list, and
//! adds the adb tunnel: `GET /phones/{id}/adb` upgraded to `cloudphone-adb`, with the keys the
//! phone's adbd may accept in [`ADB_KEY_HEADER`] headers (one per key), becomes a byte stream
//! to the phone's adbd (see `adb::phone`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cloudphone_stream::relay::{authorized, UNAUTHORIZED};
use cloudphone_stream::Confinement;
use hyper_util::rt::TokioIo;

use crate::adb::{self, ADB_KEY_HEADER, ADB_UPGRADE, MAX_KEYS_PER_USER};

/// Random bytes in a relay key (hex-encoded: twice as many characters).
const KEY_BYTES: usize = 32;

/// A running relay: its bearer key and the phones it serves.
pub struct Relay {
    key: String,
    phones: Arc<RwLock<HashMap<String, PathBuf>>>,
}

/// A fresh random key, so only the control service this agent registered with can stream.
fn new_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading random bytes for the relay key: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Relay {
    /// Listen on `addr` (over TLS with `tls`) with a new key; serves nothing until
    /// [`Relay::publish`]. Sockets and framebuffers are served only from inside `confinement`.
    pub async fn start(
        addr: SocketAddr,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
        confinement: Confinement,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the stream relay to {addr} (--relay-listen)"))?;
        let key = new_key()?;
        let phones: Arc<RwLock<HashMap<String, PathBuf>>> = Arc::default();
        let lookup = phones.clone();
        let adb = adb_routes(&key, phones.clone(), confinement.clone());
        let app = cloudphone_stream::relay::routes(
            &key,
            Arc::new(move |id: &str| read(&lookup).get(id).cloned()),
            confinement,
        )
        .merge(adb);
        tokio::spawn(async move {
            let forever = std::future::pending::<()>();
            if let Err(e) = crate::tls::serve(listener, tls, app, forever).await {
                tracing::error!(error = %e, "stream relay stopped");
            }
        });
        tracing::info!(%addr, "stream relay listening");
        Ok(Self { key, phones })
    }

    /// The bearer key to register with the control service.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Serve exactly these phones (id, VMM API socket); any other id is answered 404.
    pub fn publish(&self, phones: impl IntoIterator<Item = (String, PathBuf)>) {
        *self.phones.write().unwrap_or_else(|p| p.into_inner()) = phones.into_iter().collect();
    }
}

/// What the adb route needs: the relay key, the served phones and where their sockets may lie.
#[derive(Clone)]
struct AdbRelay {
    key: Arc<str>,
    phones: Arc<RwLock<HashMap<String, PathBuf>>>,
    confinement: Arc<Confinement>,
}

fn adb_routes(
    key: &str,
    phones: Arc<RwLock<HashMap<String, PathBuf>>>,
    confinement: Confinement,
) -> Router {
    Router::new()
        .route("/phones/{id}/adb", get(adb_tunnel))
        .with_state(AdbRelay {
            key: key.into(),
            phones,
            confinement: Arc::new(confinement),
        })
}

fn fail(status: StatusCode, why: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": why.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Opens phone `id`'s adbd with the request's keys and, once connected, switches the HTTP
/// connection to a byte stream relayed both ways until either side closes.
async fn adb_tunnel(
    State(relay): State<AdbRelay>,
    Path(id): Path<String>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    if !authorized(headers, &relay.key) {
        return fail(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    }
    let Some(api) = read(&relay.phones).get(&id).cloned() else {
        return fail(
            StatusCode::NOT_FOUND,
            format!("phone {id} does not run on this host"),
        );
    };
    let vsock = match relay
        .confinement
        .check_socket(&super::vmm::vsock_socket_beside(&api))
    {
        Ok(path) => path,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, e),
    };
    let given: Vec<&str> = headers
        .get_all(ADB_KEY_HEADER)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    if given.len() > MAX_KEYS_PER_USER {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("at most {MAX_KEYS_PER_USER} {ADB_KEY_HEADER} headers"),
        );
    }
    let keys = match given
        .iter()
        .map(|k| cloudphone_adb::key::AdbPublicKey::from_base64(k))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(keys) => keys,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("{ADB_KEY_HEADER}: {e}")),
    };
    let mut phone = match adb::phone::connect(&vsock, &keys).await {
        Ok(stream) => stream,
        Err(e) => return fail(StatusCode::BAD_GATEWAY, format!("phone {id}: {e:#}")),
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut upgraded = TokioIo::new(upgraded);
                let moved = tokio::io::copy_bidirectional(&mut upgraded, &mut phone).await;
                tracing::debug!(phone = %id, ?moved, "adb tunnel closed");
            }
            Err(e) => tracing::info!(phone = %id, error = %e, "adb tunnel upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, ADB_UPGRADE),
        ],
    )
        .into_response()
}

fn read(
    phones: &RwLock<HashMap<String, PathBuf>>,
) -> std::sync::RwLockReadGuard<'_, HashMap<String, PathBuf>> {
    phones.read().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_random_hex_and_publish_replaces_the_served_set() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_eq!(a.len(), KEY_BYTES * 2);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);

        let relay = Relay::start(
            "127.0.0.1:0".parse().unwrap(),
            None,
            Confinement::new(["/"]),
        )
        .await
        .unwrap();
        relay.publish([("ph-1".to_string(), PathBuf::from("/run/ph-1/api.sock"))]);
        assert_eq!(
            read(&relay.phones).get("ph-1"),
            Some(&PathBuf::from("/run/ph-1/api.sock"))
        );
        relay.publish([]);
        assert!(read(&relay.phones).is_empty());
    }
}
