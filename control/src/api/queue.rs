//! `/api/v1/queue`: waiting lease requests with live position and ETA.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Auth;
use super::error::ApiResult;
use super::extract;
use super::AppState;
use crate::model::QueueEntry;
use crate::store::{lifecycle, queue};

/// Routes under `/api/v1/queue`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/queue", get(list))
        .route("/queue/{id}", get(one).delete(cancel))
}

async fn list(State(st): State<AppState>, Auth(user): Auth) -> ApiResult<Json<Vec<QueueEntry>>> {
    let mut tx = st.db.begin().await?;
    Ok(Json(queue::list_visible(&mut tx, &user).await?))
}

/// One entry: `waiting` with position/ETA, or `granted` with its `lease_id`.
async fn one(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<QueueEntry>> {
    let id = extract::id(&id, "q", "queue entry")?;
    let mut tx = st.db.begin().await?;
    Ok(Json(queue::get_visible(&mut tx, &user, id).await?))
}

async fn cancel(
    State(st): State<AppState>,
    Auth(user): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<QueueEntry>> {
    let id = extract::id(&id, "q", "queue entry")?;
    let mut tx = st.db.begin().await?;
    let e = lifecycle::cancel_queued(&mut tx, &user, id).await?;
    tx.commit().await?;
    Ok(Json(e))
}
