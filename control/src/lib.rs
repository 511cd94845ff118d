//! cloudphone: the control service (REST API, scheduler, storage), the host agent and the
//! command-line client, in one crate behind one binary.

pub mod adb;
pub mod agent;
pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod db;
pub mod error;
pub mod ids;
pub mod model;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod stream;
pub mod throttle;
pub mod tls;
pub mod wire;

/// Milliseconds since the Unix epoch: the one time unit stored and sent everywhere.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
