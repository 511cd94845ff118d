//! `/api/v1/hosts`: operators enrol and list hosts; host agents join, register, heartbeat
//! (and receive their desired phones in the reply), and report phone states.
//!
//! Host identity: an operator enrols a host (`POST /hosts`: name, state root, capacity caps)
//! and gets a one-time join token; the agent trades it once (`POST /hosts/join`) for its own
//! key and sends that key as its bearer token from then on. Only SHA-256 hashes of both are
//! stored. Every agent route acts only on the key's own host (403 otherwise), VMM socket
//! paths must lie under its state root, and claimed capacity within its caps (400).
//!
//! Agent protocol (polling): `POST /hosts/register` once, then `POST /hosts/{id}/heartbeat` every
//! interval with the phones whose VMM runs; the reply lists every phone the host should
//! act on with its state (`creating`: create + boot; `resetting`: fresh overlay + boot;
//! `stopping`: stop + clean up; others: keep running) and profile. The agent reports
//! progress with `PUT /hosts/{id}/phones/{phone_id}/state`. An agent whose VMMs the control
//! service cannot reach directly registers a `relay_url` + `relay_key` (its stream relay).

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};

use super::auth::{bearer, Operator};
use super::error::{ApiError, ApiResult};
use super::extract::{self, ApiJson};
use super::AppState;
use crate::error::Error;
use crate::ids::{random_hex, sha256_hex};
use crate::model::{Host, Phone, PhoneState};
use crate::scheduler::OvercommitPolicy;
use crate::store::{audit, hosts, lifecycle, phones, profiles};
use crate::wire::hosts::{
    DesiredPhone, EnrolHost, Enrolled, Heartbeat, HeartbeatReply, HostUsage, JoinHost, Joined,
    RegisterHost, StateReport,
};

/// Routes under `/api/v1/hosts`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/hosts", get(list).post(enrol))
        .route("/hosts/join", post(join))
        .route("/hosts/register", post(register))
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

/// Prefix of a host key (`cph_` + 48 hex), which tells it apart from user API tokens.
const HOST_KEY_PREFIX: &str = "cph_";
/// Prefix of a one-time join token.
const JOIN_TOKEN_PREFIX: &str = "cpj_";

/// The host whose key the caller presented. Use as a handler argument: `HostAuth(host)`.
pub struct HostAuth(pub Host);

impl FromRequestParts<AppState> for HostAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let key = bearer(parts)?
            .filter(|k| k.starts_with(HOST_KEY_PREFIX))
            .ok_or_else(|| {
                Error::Unauthorized(
                    "host routes need `Authorization: Bearer <host key>`: start the agent once with --join-token from `cloudphone hosts enrol`".into(),
                )
            })?;
        let mut tx = st.db.begin().await?;
        let host = hosts::by_key(&mut tx, &sha256_hex(key.as_bytes()))
            .await?
            .ok_or_else(|| {
                Error::Unauthorized(
                    "unknown host key: enrol the host again (`cloudphone hosts enrol`) and rejoin"
                        .into(),
                )
            })?;
        Ok(HostAuth(host))
    }
}

/// Refuses a host route for another host than the caller's own.
fn own_host<'a>(caller: &Host, id: &'a str) -> Result<&'a str, Error> {
    let id = extract::id(id, "h", "host")?;
    if id == caller.id {
        Ok(id)
    } else {
        Err(Error::Forbidden(format!(
            "this key belongs to host {} ({}), not {id}",
            caller.name, caller.id
        )))
    }
}

/// Whether `p` is absolute, free of control characters and of `.` and `..` segments.
fn plain_absolute(p: &str) -> bool {
    p.starts_with('/')
        && !p.chars().any(char::is_control)
        && !p.split('/').any(|seg| seg == "." || seg == "..")
}

/// Checks that `path` names something strictly inside the directory `root`, lexically (the
/// service cannot see the host's file system; the host side resolves symlinks and checks
/// again with `cloudphone_stream::Confinement` before it uses a path).
fn under_root(field: &str, path: &str, root: &str) -> Result<(), Error> {
    let p = std::path::Path::new(path);
    if !root.is_empty()
        && plain_absolute(path)
        && p.starts_with(root)
        && p != std::path::Path::new(root)
    {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{field}: {path:?} is not inside this host's state root {root:?}"
        )))
    }
}

/// Checks a state root: an absolute directory other than `/`, as `plain_absolute`.
fn state_root(v: &str) -> Result<(), Error> {
    if v.len() <= 1024 && plain_absolute(v) && !v.trim_end_matches('/').is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "state_root: {v:?} must be an absolute directory (not /) without . or .., at most 1024 bytes"
        )))
    }
}

async fn enrol(
    State(st): State<AppState>,
    Operator(op): Operator,
    ApiJson(r): ApiJson<EnrolHost>,
) -> ApiResult<(StatusCode, Json<Enrolled>)> {
    extract::name("name", &r.name)?;
    state_root(&r.state_root)?;
    let e = hosts::Enrolment {
        state_root: r.state_root.trim_end_matches('/').to_owned(),
        cap_vcpus: extract::range("vcpus", r.vcpus.into(), 1, 4096)?,
        cap_memory_mib: extract::range("memory_mib", r.memory_mib.into(), 64, 64 << 20)?,
        cap_max_phones: extract::range("max_phones", r.max_phones.into(), 0, 10_000)?,
    };
    let join_token = format!("{JOIN_TOKEN_PREFIX}{}", random_hex(24));
    let mut tx = st.db.begin().await?;
    let host = hosts::enrol(&mut tx, &r.name, &e, &sha256_hex(join_token.as_bytes())).await?;
    let detail = format!(
        "{} root {} caps {} vCPU {} MiB {} phones",
        r.name, e.state_root, e.cap_vcpus, e.cap_memory_mib, e.cap_max_phones
    );
    audit::record(&mut tx, &op.name, "host.enrol", &host.id, &detail, None).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(Enrolled { host, join_token })))
}

async fn join(
    State(st): State<AppState>,
    ApiJson(r): ApiJson<JoinHost>,
) -> ApiResult<Json<Joined>> {
    let host_key = format!("{HOST_KEY_PREFIX}{}", random_hex(24));
    let mut tx = st.db.begin().await?;
    let host = hosts::join(
        &mut tx,
        &sha256_hex(r.join_token.as_bytes()),
        &sha256_hex(host_key.as_bytes()),
    )
    .await?
    .ok_or_else(|| {
        Error::Unauthorized(
            "unknown or already used join token: enrol the host again (`cloudphone hosts enrol`)"
                .into(),
        )
    })?;
    audit::record(
        &mut tx,
        &host.name,
        "host.join",
        &host.id,
        "join token used",
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(Joined { host, host_key }))
}

async fn register(
    State(st): State<AppState>,
    HostAuth(me): HostAuth,
    ApiJson(r): ApiJson<RegisterHost>,
) -> ApiResult<(StatusCode, Json<Host>)> {
    let vcpus = extract::range("vcpus", r.vcpus.into(), 1, me.cap_vcpus as u64)?;
    let memory_mib = extract::range(
        "memory_mib",
        r.memory_mib.into(),
        64,
        me.cap_memory_mib as u64,
    )?;
    let max_phones = extract::range(
        "max_phones",
        r.max_phones.into(),
        0,
        me.cap_max_phones as u64,
    )?;
    let relay = relay_of(&r)?;
    let claim = hosts::Claim {
        vcpus,
        memory_mib,
        max_phones,
        relay: relay.as_ref(),
    };
    let mut tx = st.db.begin().await?;
    let host = hosts::register(&mut tx, &me.id, &claim).await?;
    let detail = format!("{vcpus} vCPU {memory_mib} MiB {max_phones} phones");
    audit::record(&mut tx, &me.name, "host.register", &host.id, &detail, None).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(host)))
}

async fn list(State(st): State<AppState>, Operator(_): Operator) -> ApiResult<Json<Vec<Host>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(hosts::list(&mut tx).await?))
}

async fn one(
    State(st): State<AppState>,
    Operator(_): Operator,
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
    HostAuth(me): HostAuth,
    Path(id): Path<String>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    let id = own_host(&me, &id)?;
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
    if let Some(busy) = u.cpu_busy_pct {
        extract::range("usage.cpu_busy_pct", busy, 0, 100)?;
    }
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
    HostAuth(me): HostAuth,
    Path((id, phone_id)): Path<(String, String)>,
    ApiJson(r): ApiJson<StateReport>,
) -> ApiResult<Json<Phone>> {
    let id = own_host(&me, &id)?;
    let phone_id = extract::id(&phone_id, "ph", "phone")?;
    if r.reason.len() > 1024 || r.api_socket.as_ref().is_some_and(|s| s.len() > 4096) {
        return Err(Error::Invalid("reason (1024) or api_socket (4096) too long".into()).into());
    }
    if let Some(sock) = &r.api_socket {
        under_root("api_socket", sock, &me.state_root)?;
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
        phones::get(&mut tx, phone_id).await? // as stored, with its new socket
    } else {
        lifecycle::transition(&mut tx, phone_id, r.state, &me.name, &r.reason).await?
    };
    if r.state == PhoneState::Failed {
        audit::record(
            &mut tx,
            &me.name,
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
