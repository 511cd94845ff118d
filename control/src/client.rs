//! HTTP client for the control API (used by the CLI and the host agent).

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A control-service endpoint plus credentials.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// A failed API call: the status and the server's `{error, code, detail}`.
#[derive(Debug, thiserror::Error)]
#[error("{error} ({status} {code}): {detail}")]
pub struct ApiFailure {
    pub status: u16,
    pub code: String,
    pub error: String,
    pub detail: String,
}

impl Client {
    /// `base` like `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("a plain HTTP client builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// Sends a request to `/api/v1{path}` and decodes the JSON reply (status returned too).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<(u16, T)> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("{method} {url}: is the control service running?"))?;
        let status = res.status().as_u16();
        let bytes = res
            .bytes()
            .await
            .with_context(|| format!("reading reply of {method} {url}"))?;
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
            return Err(ApiFailure {
                status,
                code: field("code"),
                error: field("error"),
                detail: field("detail"),
            }
            .into());
        }
        let bytes = if bytes.is_empty() {
            &b"null"[..]
        } else {
            &bytes[..]
        };
        let v = serde_json::from_slice(bytes)
            .map_err(|e| anyhow!("{method} {url}: unexpected reply: {e}"))?;
        Ok((status, v))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.call(Method::GET, path, None::<&()>).await?.1)
    }
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        Ok(self.call(Method::POST, path, Some(body)).await?.1)
    }
    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        Ok(self.call(Method::PUT, path, Some(body)).await?.1)
    }
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        Ok(self.call(Method::PATCH, path, Some(body)).await?.1)
    }
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.call(Method::DELETE, path, None::<&()>).await?.1)
    }
}
