//! `/api/v1/profiles`: device profiles (what a phone looks like and costs).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::{Auth, Operator};
use super::error::ApiResult;
use super::extract::{self, ApiJson};
use super::AppState;
use crate::error::Error;
use crate::model::Profile;
use crate::store::{audit, profiles};
use crate::wire::profiles::{CreateProfile, UpdateProfile};

/// Routes under `/api/v1/profiles`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/profiles", get(list).post(create))
        .route("/profiles/{key}", get(one).patch(update))
}

fn image(v: &str) -> Result<(), Error> {
    if v.is_empty() {
        Ok(())
    } else {
        extract::name("image", v)
    }
}

async fn create(
    State(st): State<AppState>,
    Operator(op): Operator,
    ApiJson(r): ApiJson<CreateProfile>,
) -> ApiResult<(StatusCode, Json<Profile>)> {
    extract::name("name", &r.name)?;
    image(&r.image)?;
    let p = Profile {
        id: String::new(),
        name: r.name,
        width: extract::range("width", r.width.into(), 64, 8192)?,
        height: extract::range("height", r.height.into(), 64, 8192)?,
        dpi: extract::range("dpi", r.dpi.into(), 60, 1000)?,
        vcpus: extract::range("vcpus", r.vcpus.into(), 1, 64)?,
        memory_mib: extract::range("memory_mib", r.memory_mib.into(), 64, 262_144)?,
        image: r.image,
        pool_size: extract::range("pool_size", r.pool_size.into(), 0, 10_000)?,
        created_ms: 0,
    };
    let mut tx = st.db.begin().await?;
    let p = profiles::create(&mut tx, p).await?;
    audit::record(&mut tx, &op.name, "profile.create", &p.id, &p.name, None).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(p)))
}

async fn list(State(st): State<AppState>, Auth(_): Auth) -> ApiResult<Json<Vec<Profile>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(profiles::list(&mut tx).await?))
}

async fn one(
    State(st): State<AppState>,
    Auth(_): Auth,
    Path(key): Path<String>,
) -> ApiResult<Json<Profile>> {
    extract::name("profile", &key).map_err(|_| Error::NotFound("profile".into()))?;
    let mut tx = st.db.begin().await?;
    Ok(Json(profiles::get(&mut tx, &key).await?))
}

async fn update(
    State(st): State<AppState>,
    Operator(op): Operator,
    Path(key): Path<String>,
    ApiJson(r): ApiJson<UpdateProfile>,
) -> ApiResult<Json<Profile>> {
    extract::name("profile", &key).map_err(|_| Error::NotFound("profile".into()))?;
    let size = extract::range("pool_size", r.pool_size.into(), 0, 10_000)?;
    let mut tx = st.db.begin().await?;
    let p = profiles::set_pool_size(&mut tx, &key, size).await?;
    audit::record(
        &mut tx,
        &op.name,
        "profile.pool_size",
        &p.id,
        &size.to_string(),
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(p))
}
