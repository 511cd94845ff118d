//! The one error type of the control service; `api::error` maps it to HTTP responses.

use crate::db::DbError;

/// What went wrong, in terms a client can act on. Messages say what and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing does not exist, or exists but is not visible to the caller (no existence
    /// leak: another user's phone looks exactly like a missing one).
    #[error("{0} not found")]
    NotFound(String),
    /// Input failed validation.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with current state (name taken, lease already ended, ...).
    #[error("{0}")]
    Conflict(String),
    /// A quota would be exceeded.
    #[error("{0}")]
    Quota(String),
    /// No or bad credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts (login backoff) or the server is saturated: retry after the delay.
    #[error("{what}: retry in {retry_after_s} s")]
    Throttled { what: String, retry_after_s: u64 },
    /// Storage failed.
    #[error(transparent)]
    Db(DbError),
}

impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unique(m) => {
                Error::Conflict(format!("already exists ({m}); pick another name"))
            }
            other => Error::Db(other),
        }
    }
}

/// Result alias for store and API code.
pub type Result<T, E = Error> = std::result::Result<T, E>;
