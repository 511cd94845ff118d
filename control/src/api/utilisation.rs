//! `/api/v1/utilisation`: the fleet's load over time for operators (the operator page's chart).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Operator;
use super::error::ApiResult;
use super::extract::{self, ApiQuery};
use super::AppState;
use crate::model::UtilisationSample;
use crate::store::utilisation;
use crate::wire::utilisation::Window;

/// Most samples one request returns (a week at one sample a minute).
const MAX_SAMPLES: i64 = 10_080;
/// The longest window asked for: everything the service keeps (a week).
const MAX_MINUTES: u64 = (utilisation::RETENTION_MS / 60_000) as u64;

/// Routes for the utilisation history.
pub fn routes() -> Router<AppState> {
    Router::new().route("/utilisation", get(history))
}

async fn history(
    State(st): State<AppState>,
    Operator(_): Operator,
    ApiQuery(q): ApiQuery<Window>,
) -> ApiResult<Json<Vec<UtilisationSample>>> {
    let minutes = extract::range("minutes", q.minutes.unwrap_or(60).into(), 1, MAX_MINUTES)?;
    let since = crate::now_ms() - minutes * 60_000;
    let mut tx = st.db.begin().await?;
    Ok(Json(utilisation::since(&mut tx, since, MAX_SAMPLES).await?))
}
