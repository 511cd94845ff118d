//! Maps [`Error`] (and extractor rejections) to `{error, code, detail}` JSON responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::Error;

/// The JSON body of every error response.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// What failed, for humans.
    pub error: String,
    /// Stable machine-readable code (`not_found`, `invalid_input`, ...).
    pub code: &'static str,
    /// What to do about it, or the parser's exact complaint.
    pub detail: String,
    /// Seconds for the `Retry-After` header (429 responses).
    #[serde(skip)]
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with explicit parts (extractor rejections, unknown routes).
    pub fn new(
        status: StatusCode,
        code: &'static str,
        error: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            error: error.into(),
            detail: detail.into(),
            retry_after_s: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code, detail) = match &e {
            Error::NotFound(_) => (
                StatusCode::NOT_FOUND,
                "not_found",
                "check the id; you only see your own resources",
            ),
            Error::Invalid(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_input",
                "fix the field named in `error`",
            ),
            Error::Conflict(_) => (
                StatusCode::CONFLICT,
                "conflict",
                "the resource changed state; re-read it",
            ),
            Error::Quota(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                "ask an operator to raise your quota",
            ),
            Error::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>` or log in",
            ),
            Error::Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this needs another role",
            ),
            Error::Throttled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                "wait for the Retry-After delay, then try again",
            ),
            Error::Db(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "retry; operators: see the server log",
            ),
        };
        if status.is_server_error() {
            tracing::error!("request failed: {e}");
        }
        let error = match &e {
            Error::Db(_) => "internal storage error".to_owned(),
            other => other.to_string(),
        };
        let retry_after_s = match &e {
            Error::Throttled { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        };
        ApiError {
            retry_after_s,
            ..ApiError::new(status, code, error, detail)
        }
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(&self)).into_response();
        if let Some(s) = self.retry_after_s {
            res.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        res
    }
}

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
