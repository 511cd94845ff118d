//! `cloudphone serve`: opens the database, bootstraps the first operator, runs the
//! scheduler loop (lease expiry, host heartbeat timeouts, warm pools) and the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::api::users::create_user;
use crate::api::{self, AppState, ServerConfig};
use crate::db::Database;
use crate::model::{LeaseState, Role, User};
use crate::store::{leases, lifecycle, profiles, utilisation};
use crate::wire::users::CreateUser;

/// Options of `cloudphone serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeOptions {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the SQLite database (created if missing).
    #[arg(long, default_value = "/var/lib/cloudphone")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (`postgres://user@host/db`, or `postgres:///db?host=/socket/dir`);
    /// SQLite in --data-dir when absent.
    #[arg(long)]
    pub database: Option<String>,
    /// Create this operator if no operator exists yet and print its token (also env
    /// CLOUDPHONE_BOOTSTRAP_ADMIN).
    #[arg(long, env = "CLOUDPHONE_BOOTSTRAP_ADMIN")]
    pub bootstrap_admin: Option<String>,
    /// A host silent for this long is offline: no new phones go there, its leases stay.
    #[arg(long, default_value_t = 15_000)]
    pub heartbeat_timeout_ms: u64,
    /// A host silent for this long has its phones lost and their leases ended. Silence is
    /// counted from this service's start at the earliest (a service outage is no host's fault).
    #[arg(long, default_value_t = 120_000)]
    pub lost_after_ms: u64,
    /// Period of the scheduler loop (expiry, heartbeat timeouts, warm pools).
    #[arg(long, default_value_t = 1_000)]
    pub tick_ms: u64,
    /// Period of the fleet utilisation samples (the operator chart's resolution).
    #[arg(long, default_value_t = 60_000)]
    pub utilisation_sample_ms: u64,
    /// Directory of the web UI's static files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/web"))]
    pub web_dir: PathBuf,
    /// Address for WebRTC host candidates (UDP): one the browsers can reach.
    #[arg(long, default_value = "127.0.0.1")]
    pub webrtc_ip: std::net::IpAddr,
    /// Framebuffers the streamer may map lie here (the VMM writes them to /dev/shm), or
    /// under the phone's host's state root; any other path a VMM reports is refused.
    #[arg(long, default_value = "/dev/shm")]
    pub framebuffer_root: PathBuf,
    /// Mark the session cookie Secure (when behind TLS).
    #[arg(long)]
    pub secure_cookies: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key). Without it the service speaks
    /// plain HTTP: only for loopback or behind a TLS-terminating proxy.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that signed the agents' relay certificates: needed to stream
    /// from an agent whose --relay-url is https.
    #[arg(long)]
    pub relay_ca_file: Option<PathBuf>,
    /// API tokens expire this long after they are minted (default 90 days).
    #[arg(long, default_value_t = 90 * 24 * 3600)]
    pub token_ttl_s: u64,
    /// Argon2 hashes run at once; each login hash takes 19 MiB, and a caller waiting more
    /// than 5 s for a slot gets 429.
    #[arg(long, default_value_t = 2)]
    pub hash_concurrency: usize,
    /// Serve `/metrics` to anyone (default: operators only).
    #[arg(long)]
    pub public_metrics: bool,
}

/// The scheduler's identity in the audit log.
pub fn system_user() -> User {
    User {
        id: "system".into(),
        name: "scheduler".into(),
        role: Role::Operator,
        max_phones: 0,
        max_minutes_per_day: 0,
        created_ms: 0,
    }
}

/// Runs the server until Ctrl-C / SIGTERM.
pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    run_with(opts, axum::Router::new()).await
}

/// Like [`run`], with `extra` routes mounted under `/api/v1` (see `api::router_with`).
pub async fn run_with(opts: ServeOptions, extra: axum::Router<AppState>) -> anyhow::Result<()> {
    if opts.database.is_none() {
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating --data-dir {}", opts.data_dir.display()))?;
    }
    let db = Database::open(opts.database.as_deref(), &opts.data_dir)
        .await
        .context("opening the database")?;
    let config = ServerConfig {
        heartbeat_timeout_ms: opts.heartbeat_timeout_ms as i64,
        lost_after_ms: opts.lost_after_ms.max(opts.heartbeat_timeout_ms) as i64,
        started_ms: crate::now_ms(),
        secure_cookies: opts.secure_cookies,
        token_ttl_ms: (opts.token_ttl_s as i64).saturating_mul(1000),
        hash_concurrency: opts.hash_concurrency,
        public_metrics: opts.public_metrics,
        relay_tls: opts
            .relay_ca_file
            .as_deref()
            .map(crate::tls::client_config)
            .transpose()
            .context("--relay-ca-file")?,
        ..ServerConfig::default()
    };
    let state = AppState::new(db, config);
    if let Some(name) = &opts.bootstrap_admin {
        bootstrap(&state, name).await?;
    }
    tokio::spawn(scheduler_loop(
        state.clone(),
        Duration::from_millis(opts.tick_ms.max(10)),
    ));
    tokio::spawn(utilisation_loop(
        state.clone(),
        Duration::from_millis(opts.utilisation_sample_ms.max(100)),
    ));
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "cloudphone control service listening");
    println!("listening on {scheme}://{addr}");
    let stream = crate::stream::api_routes(
        state.clone(),
        cloudphone_stream::StreamHub::new(),
        cloudphone_stream::signalling::SignallingConfig {
            bind_ip: opts.webrtc_ip,
            ..Default::default()
        },
    );
    let app = api::router_with(state, extra.merge(stream))
        .merge(crate::stream::web_routes(opts.web_dir.clone()));
    crate::tls::serve(listener, tls, app, shutdown_signal())
        .await
        .context("serving HTTP")?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    tracing::info!("shutting down");
}

async fn bootstrap(state: &AppState, name: &str) -> anyhow::Result<()> {
    let mut tx = state.db.begin().await?;
    if crate::store::users::has_operator(&mut tx).await? {
        tracing::info!("an operator exists; --bootstrap-admin ignored");
        return Ok(());
    }
    drop(tx);
    let req = CreateUser {
        name: name.to_owned(),
        role: Role::Operator,
        password: None,
        max_phones: None,
        max_minutes_per_day: None,
    };
    let created = create_user(state, "bootstrap", req)
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap operator: {}", e.error))?;
    println!(
        "bootstrap operator {} token: {}",
        created.user.name, created.token
    );
    Ok(())
}

/// One pass of background scheduling; each step in its own transaction so one failure
/// does not block the others. Public so tests can drive time-dependent logic directly.
pub async fn tick(state: &AppState) -> crate::error::Result<()> {
    let system = system_user();
    let mut tx = state.db.begin().await?;
    let due = leases::due(&mut tx).await?;
    drop(tx);
    for id in due {
        let mut tx = state.db.begin().await?;
        match lifecycle::release(&mut tx, &system, &id, LeaseState::Expired).await {
            Ok(_) => tx.commit().await?,
            Err(e) => tracing::debug!(lease = %id, "expiry skipped: {e}"),
        }
    }
    let now = crate::now_ms();
    let cfg = &state.config;
    // Silence counts from the service's start at the earliest: hosts get a grace period.
    let cutoff = |limit: i64| (now - cfg.started_ms >= limit).then_some(now - limit);
    if let Some(c) = cutoff(cfg.heartbeat_timeout_ms) {
        let mut tx = state.db.begin().await?;
        let offline = lifecycle::mark_offline(&mut tx, c).await?;
        tx.commit().await?;
        for h in offline {
            tracing::warn!(host = %h, "host missed heartbeats: offline, its leases kept for now");
        }
    }
    if let Some(c) = cutoff(cfg.lost_after_ms) {
        let mut tx = state.db.begin().await?;
        let lost = lifecycle::lose_hosts(&mut tx, c).await?;
        tx.commit().await?;
        for p in lost {
            tracing::warn!(phone = %p, "host silent past --lost-after-ms: phone lost");
        }
    }
    let mut tx = state.db.begin().await?;
    lifecycle::reconcile_pools(&mut tx).await?;
    for p in profiles::list(&mut tx).await? {
        profiles::get_locked(&mut tx, &p.id).await?;
        lifecycle::dispatch(&mut tx, &p.id).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn scheduler_loop(state: AppState, period: Duration) {
    every(period, || tick(&state), "scheduler tick").await
}

/// Sample the fleet's utilisation every `period` (and prune old samples).
async fn utilisation_loop(state: AppState, period: Duration) {
    every(
        period,
        || async {
            let mut tx = state.db.begin().await?;
            let sample = lifecycle::sample_utilisation(&mut tx, crate::now_ms()).await?;
            utilisation::record(&mut tx, &sample).await?;
            tx.commit().await?;
            Ok(())
        },
        "utilisation sample",
    )
    .await
}

/// Run `job` every `period` forever, logging (not stopping on) failures.
async fn every<F, Fut>(period: Duration, mut job: F, what: &str)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<()>>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = job().await {
            tracing::error!("{what} failed: {e}");
        }
    }
}
