//! Serves the web UI (plain HTML + JS modules from `control/web`, no build step): `/` is
//! `index.html`, other paths map to files under the directory. Paths are checked segment by
//! segment so nothing outside the directory (dot files, `..`) can be read.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Longest URL path we look up.
const MAX_PATH: usize = 256;
/// Largest file served (the UI's files are a few KiB each).
const MAX_FILE: u64 = 4 << 20;

/// Routes `/` and `/{*file}` serving `dir`; merge at the top level (API routes keep priority
/// because they are more specific). Paths under `api/` are never served from disk.
pub fn routes<S: Clone + Send + Sync + 'static>(dir: PathBuf) -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/{*file}", get(file))
        .with_state(dir)
}

async fn index(State(dir): State<PathBuf>) -> Response {
    serve(&dir, "index.html").await
}

async fn file(State(dir): State<PathBuf>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&dir, &path).await
}

/// The file at `path` (URL form, relative) under `dir`, or a 404.
pub async fn serve(dir: &Path, path: &str) -> Response {
    let Some(rel) = safe_relative(path) else {
        return not_found();
    };
    let full = dir.join(rel);
    match tokio::fs::metadata(&full).await {
        Ok(meta) if meta.is_file() && meta.len() <= MAX_FILE => {}
        _ => return not_found(),
    }
    match tokio::fs::read(&full).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, content_type(&full)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(path = %full.display(), error = %e, "cannot read a web UI file");
            not_found()
        }
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "not found",
    )
        .into_response()
}

/// `a/b.js` → `a/b.js`; anything with empty, dot-leading or odd segments, or under `api/` → None.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() || path.len() > MAX_PATH || path.starts_with("api/") {
        return None;
    }
    let mut out = PathBuf::new();
    for seg in path.split('/') {
        let ok = !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_served() {
        assert_eq!(safe_relative("app.js"), Some(PathBuf::from("app.js")));
        assert_eq!(
            safe_relative("/js/phone.js"),
            Some(PathBuf::from("js/phone.js"))
        );
        for bad in [
            "",
            "../etc/passwd",
            "a/../../b",
            ".env",
            "a//b",
            "a/.git/x",
            "api/v1/x",
            "a\\b",
            "%2e%2e/x",
            "a b",
        ] {
            assert_eq!(safe_relative(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn serves_files_with_types_and_refuses_escapes() {
        let dir = crate::fake_vmm::test_dir("web");
        std::fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(dir.join("app.js"), "export {}").unwrap();
        let index = serve(&dir, "index.html").await;
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(
            index.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            serve(&dir, "app.js").await.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            serve(&dir, "missing.js").await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&dir, "../web/index.html").await.status(),
            StatusCode::NOT_FOUND
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
