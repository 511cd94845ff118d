//! `/api/v1/keys`: the caller's adb public keys. A phone the caller leases accepts exactly
//! these (see `adb::tunnel`), so registering one is what grants adb access.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};

use super::auth::Auth;
use super::error::ApiResult;
use super::extract::{self, ApiJson};
use super::AppState;
use crate::adb::{key, MAX_KEYS_PER_USER};
use crate::error::Error;
use crate::model::AdbKey;
use crate::store::{adb_keys, audit};
use crate::wire::keys::AddKey;

/// Longest key comment kept.
const MAX_COMMENT: usize = 128;

/// Routes under `/api/v1/keys`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/keys", get(list).post(add))
        .route("/keys/{id}", delete(remove))
}

fn comment(v: &str) -> Result<&str, Error> {
    let v = v.trim();
    if v.len() > MAX_COMMENT || v.chars().any(|c| !(' '..='~').contains(&c)) {
        return Err(Error::Invalid(format!(
            "comment: at most {MAX_COMMENT} printable ASCII characters"
        )));
    }
    Ok(v)
}

async fn add(
    State(st): State<AppState>,
    Auth(user): Auth,
    ApiJson(r): ApiJson<AddKey>,
) -> ApiResult<(StatusCode, Json<AdbKey>)> {
    let parsed = key::parse(&r.key)?;
    let comment = comment(&r.comment)?;
    let mut tx = st.db.begin().await?;
    let k = adb_keys::add(&mut tx, &user.id, &parsed, comment, MAX_KEYS_PER_USER).await?;
    audit::record(
        &mut tx,
        &user.name,
        "adb_key.add",
        &k.id,
        &k.fingerprint,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(k)))
}

async fn list(State(st): State<AppState>, Auth(user): Auth) -> ApiResult<Json<Vec<AdbKey>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(adb_keys::list(&mut tx, &user.id).await?))
}

async fn remove(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<AdbKey>> {
    let id = extract::id(&id, "ak", "adb key")?;
    let mut tx = st.db.begin().await?;
    let k = adb_keys::remove(&mut tx, &user.id, id).await?;
    audit::record(
        &mut tx,
        &user.name,
        "adb_key.remove",
        &k.id,
        &k.fingerprint,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(k))
}
