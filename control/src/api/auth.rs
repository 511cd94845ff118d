//! Authentication extractors and the login/logout routes.
//!
//! Two ways in: `Authorization: Bearer cpt_...` (CLI, scripts; host agents use their host key, see `api::hosts`) or the
//! `cloudphone_session` cookie set by `POST /api/v1/auth/login` (web UI). The cookie is
//! HttpOnly and SameSite=Strict, and state-changing requests that rely on it must also carry
//! the `X-CloudPhone-CSRF` header, which a cross-site form cannot set.

use std::net::IpAddr;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::{ApiError, ApiResult};
use super::extract::ApiJson;
use super::AppState;
use crate::error::Error;
use crate::ids::{random_hex, sha256_hex};
use crate::model::{Role, User};
use crate::store::users;
use crate::tls::PeerAddr;
use crate::wire::auth::LoginRequest;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "cloudphone_session";
/// Header required on cookie-authenticated state-changing requests.
pub const CSRF_HEADER: &str = "x-cloudphone-csrf";

/// Any authenticated caller. Use as a handler argument: `Auth(user): Auth`.
pub struct Auth(pub User);

/// An authenticated operator (403 for others).
pub struct Operator(pub User);

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}

/// The bearer token of a request, `None` without an `Authorization` header.
pub fn bearer(parts: &Parts) -> Result<Option<&str>, Error> {
    let Some(h) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = h
        .to_str()
        .map_err(|_| Error::Unauthorized("Authorization header is not ASCII".into()))?;
    let token = v
        .strip_prefix("Bearer ")
        .ok_or_else(|| Error::Unauthorized("Authorization must be `Bearer <token>`".into()))?;
    Ok(Some(token.trim()))
}

/// Resolves the caller from a bearer token or a session cookie.
pub async fn authenticate(parts: &Parts, st: &AppState) -> Result<User, Error> {
    if let Some(token) = bearer(parts)? {
        let ttl = st.config.token_ttl_ms;
        return st.tokens.verify(&st.db, &st.hashes, token, ttl).await;
    }
    let sid = cookie(&parts.headers, SESSION_COOKIE).ok_or_else(|| {
        Error::Unauthorized("not logged in: send a bearer token or log in".into())
    })?;
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !parts.headers.contains_key(CSRF_HEADER) {
        return Err(Error::Forbidden(format!(
            "cookie-authenticated {} needs the {CSRF_HEADER} header",
            parts.method
        )));
    }
    let mut tx = st.db.begin().await?;
    users::session_user(&mut tx, &sha256_hex(sid.as_bytes()))
        .await?
        .ok_or_else(|| Error::Unauthorized("session expired: log in again".into()))
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        Ok(Auth(authenticate(parts, st).await?))
    }
}

/// Resolves the caller and requires the operator role.
pub async fn operator(parts: &Parts, st: &AppState) -> Result<User, Error> {
    let user = authenticate(parts, st).await?;
    if user.role != Role::Operator {
        return Err(Error::Forbidden("operators only".into()));
    }
    Ok(user)
}

/// The credential a request came with, to keep it alive when a password change ends the
/// user's other sessions: (API token id, SHA-256 of the session cookie).
pub fn credential(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| crate::auth::token_id(t.trim()))
        .map(str::to_owned);
    let session = cookie(headers, SESSION_COOKIE).map(|sid| sha256_hex(sid.as_bytes()));
    (token, session)
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        Ok(Operator(operator(parts, st).await?))
    }
}

/// Routes under `/api/v1/auth`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/whoami", get(whoami))
}

/// The client's address; unknown (all such clients share one throttle key) only when the
/// server was started without connection info.
pub struct ClientIp(pub IpAddr);

impl<S: Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<PeerAddr>>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip()),
        ))
    }
}

/// `POST /auth/login`: throttled per user name and per client IP (429 with Retry-After);
/// unknown names cost the same argon2 hash as known ones.
async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Response> {
    let bad = || Error::Unauthorized("wrong user name or password".into());
    if req.name.len() > 64 || req.password.len() > 1024 {
        return Err(bad().into());
    }
    let attempt = st.logins.begin(&req.name, ip)?;
    let mut tx = st.db.begin().await?;
    let found = users::by_name_with_password(&mut tx, &req.name).await?;
    drop(tx);
    let (user, hash) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    let pw = req.password;
    let ok = st
        .hashes
        .run(move || crate::auth::verify_password(&pw, hash.as_deref()))
        .await?;
    let Some(user) = user.filter(|_| ok) else {
        attempt.failed();
        return Err(bad().into());
    };
    attempt.succeeded();
    let sid = random_hex(32);
    let ttl = st.config.session_ttl_ms;
    let mut tx = st.db.begin().await?;
    users::insert_session(
        &mut tx,
        &sha256_hex(sid.as_bytes()),
        &user.id,
        crate::now_ms() + ttl,
    )
    .await?;
    crate::store::audit::record(&mut tx, &user.name, "auth.login", &user.id, "", None).await?;
    tx.commit().await?;
    let secure = if st.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let set = format!(
        "{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        ttl / 1000
    );
    Ok(([(header::SET_COOKIE, set)], Json(user)).into_response())
}

async fn logout(
    State(st): State<AppState>,
    Auth(_user): Auth,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(sid) = cookie(&headers, SESSION_COOKIE) {
        let mut tx = st.db.begin().await?;
        users::delete_session(&mut tx, &sha256_hex(sid.as_bytes())).await?;
        tx.commit().await?;
    }
    let clear = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

async fn whoami(Auth(user): Auth) -> Json<User> {
    Json(user)
}
