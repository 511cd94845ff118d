//! `/api/v1/audit` (operators: everything) and `/api/v1/events` (a user's notifications).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::{Auth, Operator};
use super::error::ApiResult;
use super::extract::{self, ApiQuery};
use super::AppState;
use crate::model::AuditEvent;
use crate::store::audit;
use crate::wire::audit::Limit;

/// Routes for the audit log and notifications.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/audit", get(all))
        .route("/events", get(mine))
}

fn limit(q: &Limit) -> Result<i64, crate::error::Error> {
    extract::range("limit", q.limit.unwrap_or(100).into(), 1, 1000)
}

async fn all(
    State(st): State<AppState>,
    Operator(_): Operator,
    ApiQuery(q): ApiQuery<Limit>,
) -> ApiResult<Json<Vec<AuditEvent>>> {
    let n = limit(&q)?;
    let mut tx = st.db.begin().await?;
    Ok(Json(audit::list(&mut tx, None, n).await?))
}

async fn mine(
    State(st): State<AppState>,
    Auth(user): Auth,
    ApiQuery(q): ApiQuery<Limit>,
) -> ApiResult<Json<Vec<AuditEvent>>> {
    let n = limit(&q)?;
    let mut tx = st.db.begin().await?;
    Ok(Json(audit::list(&mut tx, Some(&user.id), n).await?))
}
