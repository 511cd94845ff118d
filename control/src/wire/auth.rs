//! `/api/v1/auth` bodies.

use serde::Deserialize;

/// `POST /auth/login` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub name: String,
    /// Password in clear (over the operator's TLS front end).
    pub password: String,
}
