//! `/api/v1/utilisation` query.

use serde::Deserialize;

/// `?minutes=N`: how far back (1..=10080, default 60).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Minutes of history.
    pub minutes: Option<u32>,
}
