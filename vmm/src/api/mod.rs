//! The per-VM control API (vmm/API.md): HTTP/1.1 + JSON over a Unix socket.

pub mod device_routes;
pub mod http;
pub mod routes;
pub mod server;
pub mod stream;

pub use routes::{route, Reply, Status, VmApi};
pub use server::{ApiServer, ApiTarget};
