//! The per-VM control API (API.md): HTTP/1.1 + JSON over a Unix socket.

pub mod http;
pub mod routes;
pub mod server;

pub use routes::{route, Status, VmApi};
pub use server::{ApiServer, ApiTarget};
