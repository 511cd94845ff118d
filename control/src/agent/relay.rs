//! The agent's stream relay (`--relay-listen`): serves the screens and input of the phones
//! running here to a control service that cannot reach their VMM sockets and shared-memory
//! framebuffers (the agent runs on another machine or inside a VM). The protocol is
//! `cloudphone_stream::relay`; this module owns the listener, the key and the phone list.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use cloudphone_stream::Confinement;

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
        let app = cloudphone_stream::relay::routes(
            &key,
            Arc::new(move |id: &str| read(&lookup).get(id).cloned()),
            confinement,
        );
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
