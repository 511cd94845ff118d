//! `/api/v1/hosts`: host agents register, heartbeat (and receive their desired phones in
//! the reply), and report phone states; operators list hosts.
//!
//! Agent protocol (polling): `POST /hosts` once, then `POST /hosts/{id}/heartbeat` every
//! interval with the phones whose VMM runs; the reply lists every phone the host should
//! act on with its state (`creating`: create + boot; `resetting`: fresh overlay + boot;
//! `stopping`: stop + clean up; others: keep running) and profile. The agent reports
//! progress with `PUT /hosts/{id}/phones/{phone_id}/state`. An agent whose VMMs the control
//! service cannot reach directly registers a `relay_url` + `relay_key` (its stream relay).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};

use super::auth::{AgentAuth, Operator};
use super::error::ApiResult;
use super::extract::{self, ApiJson};
use super::AppState;
use crate::error::Error;
use crate::model::{Host, Phone, PhoneState};
use crate::scheduler::OvercommitPolicy;
use crate::store::{audit, hosts, lifecycle, phones, profiles};
use crate::wire::hosts::{
    DesiredPhone, Heartbeat, HeartbeatReply, HostUsage, RegisterHost, StateReport,
};

/// Routes under `/api/v1/hosts`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(list).post(register))
        .route("/hosts/{id}", get(one))
        .route("/hosts/{id}/heartbeat", post(heartbeat))
        .route("/hosts/{id}/policy", put(set_policy))
        .route("/hosts/{id}/phones/{phone_id}/state", put(report))
}

/// Longest relay URL accepted.
const MAX_RELAY_URL: usize = 512;
/// Relay keys are random tokens of this many characters at least (and at most 256).
const MIN_RELAY_KEY: usize = 16;

/// The relay of a registration, checked: both fields or neither, a usable URL and key.
fn relay_of(r: &RegisterHost) -> Result<Option<hosts::HostRelay>, Error> {
    let (url, key) = match (&r.relay_url, &r.relay_key) {
        (None, None) => return Ok(None),
        (Some(url), Some(key)) => (url, key),
        _ => {
            return Err(Error::Invalid(
                "relay_url and relay_key go together: send both or neither".into(),
            ))
        }
    };
    if url.len() > MAX_RELAY_URL || !(MIN_RELAY_KEY..=256).contains(&key.len()) {
        return Err(Error::Invalid(format!(
            "relay_url is at most {MAX_RELAY_URL} bytes, relay_key {MIN_RELAY_KEY} to 256"
        )));
    }
    cloudphone_stream::ScreenSource::relay(url, key, "probe")
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(Some(hosts::HostRelay {
        url: url.clone(),
        key: key.clone(),
    }))
}

async fn register(
    State(st): State<AppState>,
    AgentAuth(_): AgentAuth,
    ApiJson(r): ApiJson<RegisterHost>,
) -> ApiResult<(StatusCode, Json<Host>)> {
    extract::name("name", &r.name)?;
    let vcpus = extract::range("vcpus", r.vcpus.into(), 1, 4096)?;
    let mem = extract::range("memory_mib", r.memory_mib.into(), 64, 64 << 20)?;
    let max = extract::range("max_phones", r.max_phones.into(), 0, 10_000)?;
    let relay = relay_of(&r)?;
    let mut tx = st.db.begin().await?;
    let host = hosts::register(&mut tx, &r.name, vcpus, mem, max, relay.as_ref()).await?;
    audit::record(&mut tx, "agent", "host.register", &host.id, &r.name, None).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(host)))
}

async fn list(State(st): State<AppState>, Operator(_): Operator) -> ApiResult<Json<Vec<Host>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(hosts::list(&mut tx).await?))
}

async fn one(
    State(st): State<AppState>,
    AgentAuth(_): AgentAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<Host>> {
    let id = extract::id(&id, "h", "host")?;
    let mut tx = st.db.begin().await?;
    Ok(Json(hosts::get(&mut tx, id).await?))
}

/// Upper bound on phones a heartbeat may list (a host never runs more).
const MAX_RUNNING: usize = 10_000;

async fn heartbeat(
    State(st): State<AppState>,
    AgentAuth(_): AgentAuth,
    Path(id): Path<String>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    let id = extract::id(&id, "h", "host")?;
    if hb.running.len() > MAX_RUNNING {
        return Err(Error::Invalid(format!("running: at most {MAX_RUNNING} phones")).into());
    }
    let usage = hb.usage.as_ref().map(checked_usage).transpose()?;
    let mut tx = st.db.begin().await?;
    let mut host = lifecycle::heartbeat(&mut tx, id, &hb.running).await?;
    if let Some(usage) = &usage {
        hosts::record_usage(&mut tx, id, usage).await?;
        host = hosts::get(&mut tx, id).await?;
    }
    let mut out = Vec::new();
    for phone in phones::for_host(&mut tx, id).await? {
        let profile = profiles::get(&mut tx, &phone.profile_id).await?;
        out.push(DesiredPhone { phone, profile });
    }
    tx.commit().await?;
    Ok(Json(HeartbeatReply {
        host,
        phones: out,
        heartbeat_timeout_ms: st.config.heartbeat_timeout_ms,
    }))
}

/// Largest memory figure (MiB) a measurement may carry: 64 TiB.
const MAX_MEASURED_MIB: u64 = 64 << 20;

/// A heartbeat's measurements, checked: at most one entry per running phone, figures within
/// bounds, so an agent cannot make the scheduler believe in negative or absurd use.
fn checked_usage(u: &HostUsage) -> Result<&HostUsage, Error> {
    if u.phones.len() > MAX_RUNNING {
        return Err(Error::Invalid(format!(
            "usage.phones: at most {MAX_RUNNING} phones"
        )));
    }
    extract::range(
        "usage.mem_available_mib",
        u.mem_available_mib,
        0,
        MAX_MEASURED_MIB,
    )?;
    for p in &u.phones {
        if !crate::ids::is_id(&p.id, "ph") {
            return Err(Error::Invalid(format!(
                "usage.phones: {:?} is not a phone id",
                p.id
            )));
        }
        extract::range(
            "usage.phones.private_mib",
            p.private_mib,
            0,
            MAX_MEASURED_MIB,
        )?;
        extract::range("usage.phones.pss_mib", p.pss_mib, 0, MAX_MEASURED_MIB)?;
        extract::range("usage.phones.cpu_ms", p.cpu_ms, 0, u64::MAX >> 2)?;
    }
    Ok(u)
}

/// `PUT /hosts/{id}/policy` (operator): how far the scheduler may overcommit this host.
async fn set_policy(
    State(st): State<AppState>,
    Operator(op): Operator,
    Path(id): Path<String>,
    ApiJson(p): ApiJson<OvercommitPolicy>,
) -> ApiResult<Json<Host>> {
    let id = extract::id(&id, "h", "host")?;
    p.validate().map_err(Error::Invalid)?;
    let mut tx = st.db.begin().await?;
    let host = hosts::set_policy(&mut tx, id, &p).await?;
    let detail = format!(
        "vcpu {} %, memory {} %, reserve {} MiB",
        p.vcpu_pct, p.memory_pct, p.reserve_mib
    );
    audit::record(&mut tx, &op.name, "host.policy", id, &detail, None).await?;
    tx.commit().await?;
    Ok(Json(host))
}

async fn report(
    State(st): State<AppState>,
    AgentAuth(agent): AgentAuth,
    Path((id, phone_id)): Path<(String, String)>,
    ApiJson(r): ApiJson<StateReport>,
) -> ApiResult<Json<Phone>> {
    let id = extract::id(&id, "h", "host")?;
    let phone_id = extract::id(&phone_id, "ph", "phone")?;
    if r.reason.len() > 1024 || r.api_socket.as_ref().is_some_and(|s| s.len() > 4096) {
        return Err(Error::Invalid("reason (1024) or api_socket (4096) too long".into()).into());
    }
    let mut tx = st.db.begin().await?;
    let phone = phones::get(&mut tx, phone_id).await?;
    if phone.host_id != id {
        return Err(Error::NotFound("phone".into()).into());
    }
    if phone.generation != r.generation {
        return Err(Error::Conflict(format!(
            "stale report for generation {} (phone is at {}); re-read the heartbeat",
            r.generation, phone.generation
        ))
        .into());
    }
    if let Some(sock) = &r.api_socket {
        phones::set_api_socket(&mut tx, phone_id, sock).await?;
    }
    let phone = if phone.state == r.state {
        phone
    } else {
        lifecycle::transition(&mut tx, phone_id, r.state, &agent.name, &r.reason).await?
    };
    if r.state == PhoneState::Failed {
        audit::record(
            &mut tx,
            &agent.name,
            "phone.crashloop",
            phone_id,
            &r.reason,
            None,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Json(phone))
}
