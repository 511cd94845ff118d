//! `/api/v1/audit` and `/api/v1/events` query.

use serde::Deserialize;

/// `?limit=N` (1..=1000, default 100).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Most entries returned, newest first.
    pub limit: Option<u32>,
}
