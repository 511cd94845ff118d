//! Input extraction and validation: JSON bodies with JSON errors, and field checks that
//! turn hostile input into a 400 naming the field before anything reaches the store.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::error::Error;

/// Like `axum::Json`, but rejections are our JSON errors (with serde's reason as detail).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(r) => Err(rejection(r)),
        }
    }
}

fn rejection(r: JsonRejection) -> ApiError {
    let status = r.status();
    let (code, error) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => (
            "invalid_json_data",
            "JSON does not match the expected fields/types",
        ),
        _ => ("malformed_json", "request body is not valid JSON"),
    };
    ApiError::new(status, code, error, r.body_text())
}

/// Checks a name: 1-64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn name(field: &str, v: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && v.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{field}: {v:?} must be 1-64 of A-Z a-z 0-9 . _ - starting with a letter or digit"
        )))
    }
}

/// Checks `lo <= v <= hi` and returns it widened.
pub fn range(field: &str, v: u64, lo: u64, hi: u64) -> Result<i64, Error> {
    if (lo..=hi).contains(&v) {
        Ok(v as i64)
    } else {
        Err(Error::Invalid(format!(
            "{field}: {v} is outside {lo}..={hi}"
        )))
    }
}

/// Checks a path id of the given kind; malformed ids are simply not found.
pub fn id<'a>(v: &'a str, prefix: &str, what: &str) -> Result<&'a str, Error> {
    if crate::ids::is_id(v, prefix) {
        Ok(v)
    } else {
        Err(Error::NotFound(what.into()))
    }
}

/// Like `axum::extract::Query`, with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(r) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "bad query string",
                r.body_text(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_reject_sql_and_control_characters() {
        assert!(name("name", "pixel-7_a.1").is_ok());
        for bad in [
            "",
            "'; DROP TABLE users; --",
            "a b",
            "-x",
            "ä",
            &"x".repeat(65),
            "a\0b",
        ] {
            assert!(name("name", bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn name_check_never_panics_and_accepts_only_safe_bytes(s in ".{0,80}") {
            if name("n", &s).is_ok() {
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            }
        }
    }

    #[test]
    fn ranges_are_inclusive() {
        assert_eq!(range("w", 1, 1, 2).unwrap(), 1);
        assert!(range("w", 0, 1, 2).is_err());
        assert!(range("w", u64::MAX, 1, 2).is_err());
        eprintln!("fuzz name-check: {} cases", ProptestConfig::default().cases);
    }
}
