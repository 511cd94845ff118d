//! `/api/v1/phones` query.

use serde::Deserialize;

use crate::model::PhoneState;

/// `?state=ready` filter.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneFilter {
    /// Only phones in this state.
    pub state: Option<PhoneState>,
}
