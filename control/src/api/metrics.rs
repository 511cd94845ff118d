//! Prometheus `/metrics`: request latency histograms (kept in memory) and fleet gauges
//! (phones by state, active leases, queue length; read from the database at scrape time).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::error::ApiResult;
use super::AppState;
use crate::model::PhoneState;
use crate::store::{leases, phones, queue};

/// Histogram bucket upper bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Request latency by (method, route template, status).
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Metrics {
    /// Records one request.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut m = self.requests.lock().expect("metrics lock");
        let h = m
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    fn write_requests(&self, out: &mut String) {
        out.push_str("# HELP cloudphone_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE cloudphone_http_request_duration_seconds histogram\n");
        let m = self.requests.lock().expect("metrics lock");
        for ((method, route, status), h) in m.iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "cloudphone_http_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "cloudphone_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "cloudphone_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "cloudphone_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
}

/// `GET /metrics` in the Prometheus text format: operators only (fleet size and load are
/// not for everyone) unless the server runs with `--public-metrics`.
pub async fn render(
    State(st): State<AppState>,
    req: axum::extract::Request,
) -> ApiResult<impl IntoResponse> {
    if !st.config.public_metrics {
        super::auth::operator(&req.into_parts().0, &st).await?;
    }
    let mut tx = st.db.begin().await?;
    let by_state = phones::count_by_state(&mut tx).await?;
    let active = leases::active_count(&mut tx).await?;
    let waiting = queue::total_waiting(&mut tx).await?;
    drop(tx);
    let mut out = String::new();
    out.push_str("# HELP cloudphone_phones Phones by state.\n# TYPE cloudphone_phones gauge\n");
    for s in PhoneState::ALL {
        let n = by_state
            .iter()
            .find(|(k, _)| k == s.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "cloudphone_phones{{state=\"{}\"}} {n}", s.as_str());
    }
    let _ = writeln!(out, "# HELP cloudphone_leases_active Active leases.\n# TYPE cloudphone_leases_active gauge\ncloudphone_leases_active {active}");
    let _ = writeln!(out, "# HELP cloudphone_queue_length Waiting lease requests.\n# TYPE cloudphone_queue_length gauge\ncloudphone_queue_length {waiting}");
    st.metrics.write_requests(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}
