//! `/api/v1/leases`: ask for a phone (granted now or queued), renew, release.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::Auth;
use super::error::ApiResult;
use super::extract::{self, ApiJson, ApiQuery};
use super::AppState;
use crate::error::Error;
use crate::model::{Lease, LeaseState};
use crate::scheduler::MAX_LEASE_S;
use crate::store::leases;
use crate::store::lifecycle::{self, Acquired, LeaseRequest};
use crate::wire::leases::{AcquireRequest, AcquireResponse, LeaseFilter, RenewRequest};

/// Routes under `/api/v1/leases`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/leases", get(list).post(acquire))
        .route("/leases/{id}", get(one).delete(release))
        .route("/leases/{id}/renew", post(renew))
}

fn duration(v: Option<u64>) -> Result<i64, Error> {
    extract::range("duration_s", v.unwrap_or(3600), 1, MAX_LEASE_S as u64)
}

async fn acquire(
    State(st): State<AppState>,
    Auth(user): Auth,
    ApiJson(r): ApiJson<AcquireRequest>,
) -> ApiResult<(StatusCode, Json<AcquireResponse>)> {
    extract::name("profile", &r.profile)?;
    let req = LeaseRequest {
        profile: r.profile,
        duration_s: duration(r.duration_s)?,
        persistent: r.persistent,
        wait: r.wait.unwrap_or(true),
    };
    let mut tx = st.db.begin().await?;
    let out = lifecycle::acquire(&mut tx, &user, &req).await?;
    tx.commit().await?;
    Ok(match out {
        Acquired::Granted(lease) => (
            StatusCode::CREATED,
            Json(AcquireResponse::Granted { lease }),
        ),
        Acquired::Queued(queue) => (
            StatusCode::ACCEPTED,
            Json(AcquireResponse::Queued { queue }),
        ),
    })
}

async fn list(
    State(st): State<AppState>,
    Auth(user): Auth,
    ApiQuery(f): ApiQuery<LeaseFilter>,
) -> ApiResult<Json<Vec<Lease>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(leases::list_visible(&mut tx, &user, f.all).await?))
}

async fn one(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Lease>> {
    let id = extract::id(&id, "ls", "lease")?;
    let mut tx = st.db.begin().await?;
    Ok(Json(leases::get_visible(&mut tx, &user, id).await?))
}

async fn release(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Lease>> {
    let id = extract::id(&id, "ls", "lease")?;
    let mut tx = st.db.begin().await?;
    let lease = lifecycle::release(&mut tx, &user, id, LeaseState::Released).await?;
    tx.commit().await?;
    Ok(Json(lease))
}

async fn renew(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<RenewRequest>,
) -> ApiResult<Json<Lease>> {
    let id = extract::id(&id, "ls", "lease")?;
    let d = duration(Some(r.duration_s))?;
    let mut tx = st.db.begin().await?;
    let lease = lifecycle::renew(&mut tx, &user, id, d).await?;
    tx.commit().await?;
    Ok(Json(lease))
}
