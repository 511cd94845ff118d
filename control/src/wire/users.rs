//! `/api/v1/users` bodies: creating and changing users, minting tokens.

use serde::{Deserialize, Serialize};

use crate::model::{Role, User};

/// `POST /users` body; also the flags of `cloudphone users add`.
#[derive(Serialize, Deserialize, Debug, Clone, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Unique user name.
    #[arg(long)]
    pub name: String,
    /// What the user may do.
    #[arg(long, default_value = "user")]
    pub role: Role,
    /// Password for web login (read from CLOUDPHONE_NEW_PASSWORD if set; none: token only).
    #[arg(long, env = "CLOUDPHONE_NEW_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Phones held at once (default from the server).
    #[arg(long)]
    pub max_phones: Option<u32>,
    /// Lease minutes per day (default from the server).
    #[arg(long)]
    pub max_minutes_per_day: Option<u32>,
}

/// A user plus a freshly minted token (shown once).
#[derive(Serialize, Deserialize)]
pub struct UserWithToken {
    /// The new user.
    pub user: User,
    /// Its first token, in clear (only its hash is stored).
    pub token: String,
    /// The token's id, for revoking it.
    pub token_id: String,
}

/// `PATCH /users/{id}` body: operators change quotas; anyone their own password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New phone quota.
    pub max_phones: Option<u32>,
    /// New daily minutes quota.
    pub max_minutes_per_day: Option<u32>,
    /// New password.
    pub password: Option<String>,
    /// The current password: required when changing your own password.
    pub current_password: Option<String>,
}

/// A new token (shown once).
#[derive(Serialize, Deserialize)]
pub struct NewToken {
    /// The token's id, for revoking it.
    pub token_id: String,
    /// The token in clear (only its hash is stored).
    pub token: String,
}
