//! The REST API: one router per resource under `/api/v1`, plus `/metrics` and `/healthz`.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod hosts;
pub mod keys;
pub mod leases;
pub mod metrics;
pub mod openapi;
pub mod phones;
pub mod profiles;
pub mod queue;
pub mod users;
pub mod utilisation;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::{HashPool, TokenCache};
use crate::db::Database;
use crate::throttle::LoginThrottle;
use error::ApiError;

/// Largest request body accepted (every request body here is a small JSON object).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Server settings that handlers need.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Silence after which a host is offline (no new phones; its leases stay).
    pub heartbeat_timeout_ms: i64,
    /// Silence after which an offline host's phones are lost and their leases end.
    pub lost_after_ms: i64,
    /// When this service started: no host is judged silent for longer than it has run,
    /// so a service outage never counts against the hosts.
    pub started_ms: i64,
    /// Where VMMs on this machine write framebuffers: the streamer maps nothing else
    /// (besides the phone's host's state root).
    pub framebuffer_root: std::path::PathBuf,
    /// Add `Secure` to the session cookie (when served behind TLS).
    pub secure_cookies: bool,
    /// Web session lifetime.
    pub session_ttl_ms: i64,
    /// API token lifetime from minting.
    pub token_ttl_ms: i64,
    /// Argon2 hashes run at once (each password hash takes 19 MiB).
    pub hash_concurrency: usize,
    /// Serve `/metrics` without authentication (else operators only).
    pub public_metrics: bool,
    /// Verifies agents' relays at `https` URLs (`--relay-ca-file`).
    pub relay_tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 15_000,
            lost_after_ms: 120_000,
            started_ms: crate::now_ms(),
            framebuffer_root: "/dev/shm".into(),
            secure_cookies: false,
            session_ttl_ms: 12 * 3600 * 1000,
            token_ttl_ms: 90 * 24 * 3600 * 1000,
            hash_concurrency: 2,
            public_metrics: false,
            relay_tls: None,
        }
    }
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub tokens: TokenCache,
    pub hashes: HashPool,
    pub logins: LoginThrottle,
    /// Open adb tunnels per lease (a cap against connection floods).
    pub adb_tunnels: crate::adb::tunnel::OpenTunnels,
    pub metrics: Arc<metrics::Metrics>,
    pub config: Arc<ServerConfig>,
}

impl AppState {
    /// State over an opened database.
    pub fn new(db: Database, config: ServerConfig) -> Self {
        Self {
            db,
            tokens: TokenCache::default(),
            hashes: HashPool::new(config.hash_concurrency),
            logins: LoginThrottle::default(),
            adb_tunnels: Default::default(),
            metrics: Arc::default(),
            config: Arc::new(config),
        }
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The application plus `extra` routes mounted under `/api/v1` (e.g. streaming/signalling
/// routes from another crate; they get the same state, auth extractors, limits and metrics).
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let api = Router::new()
        .merge(extra)
        .merge(auth::routes())
        .merge(users::routes())
        .merge(profiles::routes())
        .merge(phones::routes())
        .merge(leases::routes())
        .merge(queue::routes())
        .merge(hosts::routes())
        .merge(keys::routes())
        .merge(crate::adb::tunnel::routes())
        .merge(audit::routes())
        .merge(utilisation::routes())
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .nest("/api/v1", api)
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(healthz))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn healthz(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut tx = st.db.begin().await?;
    tx.query("SELECT 1", &[]).await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

async fn no_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such route",
        "see /api/v1/openapi.json",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
        "see /api/v1/openapi.json",
    )
}

/// Logs every request and records its latency by route template and status.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let res = next.run(req).await;
    let elapsed = start.elapsed();
    let status = res.status();
    st.metrics
        .observe(method.as_str(), &route, status.as_u16(), elapsed);
    if status.is_server_error() {
        tracing::warn!(%method, route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request failed");
    } else {
        tracing::debug!(%method, route, status = status.as_u16(), ms = elapsed.as_millis() as u64, "request");
    }
    res
}
