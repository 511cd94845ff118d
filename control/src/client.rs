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

/// Whether a request failed because the server's certificate chain did not verify.
fn is_untrusted_certificate(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("certificate") || text.contains("UnknownIssuer") {
            return true;
        }
        source = err.source();
    }
    false
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
    /// `base` like `http://127.0.0.1:8080`; an `https` base needs [`Client::with_ca_file`].
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self::with_ca_file(base, token, None).expect("a client without a CA file builds")
    }

    /// Like [`Client::new`], trusting exactly the CA certificates in the PEM file `ca_file`
    /// for `https` (no bundled roots: for a public CA pass the system bundle, e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub fn with_ca_file(
        base: &str,
        token: Option<String>,
        ca_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate bundle", path.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{}: no CERTIFICATE block in the CA file", path.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: builder.build().context("building the HTTPS client")?,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
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
        let res = req.send().await.map_err(|e| {
            let hint = if is_untrusted_certificate(&e) {
                "the server's TLS certificate is not trusted: pass --ca-file (env \
                 CLOUDPHONE_CA_FILE) with the PEM CA that signed it"
            } else {
                "is the control service running (and speaking http vs https as the URL says)?"
            };
            anyhow::Error::new(e).context(format!("{method} {url}: {hint}"))
        })?;
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
