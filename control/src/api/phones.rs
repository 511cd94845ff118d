//! `/api/v1/phones`: a user's phones (operators: all), and stopping one.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Auth;
use super::error::ApiResult;
use super::extract::{self, ApiQuery};
use super::AppState;
use crate::error::Error;
use crate::model::{Phone, PhoneState, Role};
use crate::store::{audit, lifecycle, phones};
use crate::wire::phones::PhoneFilter;

/// Routes under `/api/v1/phones`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/phones", get(list))
        .route("/phones/{id}", get(one).delete(stop))
}

async fn list(
    State(st): State<AppState>,
    Auth(user): Auth,
    ApiQuery(f): ApiQuery<PhoneFilter>,
) -> ApiResult<Json<Vec<Phone>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(phones::list_visible(&mut tx, &user, f.state).await?))
}

async fn one(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Phone>> {
    let id = extract::id(&id, "ph", "phone")?;
    let mut tx = st.db.begin().await?;
    Ok(Json(phones::get_visible(&mut tx, &user, id).await?))
}

/// Stops a phone and deletes its disk (`cloudphone phones wipe`, audited as `phone.wipe`):
/// operators any phone; a user only their parked persistent phone. Leased phones are
/// released through their lease instead. Nothing else deletes a persistent phone's data.
async fn stop(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<Phone>> {
    let id = extract::id(&id, "ph", "phone")?;
    let mut tx = st.db.begin().await?;
    let p = phones::get_visible(&mut tx, &user, id).await?;
    if user.role != Role::Operator && p.reserved_for.as_deref() != Some(user.id.as_str()) {
        return Err(
            Error::Conflict("this phone is leased: release the lease instead".into()).into(),
        );
    }
    let p = lifecycle::transition(
        &mut tx,
        id,
        PhoneState::Stopping,
        &user.name,
        "stopped and its disk wiped by request",
    )
    .await?;
    audit::record(
        &mut tx,
        &user.name,
        "phone.wipe",
        id,
        "disk deleted on stop",
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(Json(p))
}
