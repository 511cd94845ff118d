//! The per-VM control API (vmm/API.md): HTTP/1.1 + JSON over a Unix socket.

pub mod devices;
pub mod http;
pub mod routes;
pub mod server;
pub mod stream;

pub use http::Reply;
pub use routes::{route, Status, VmApi};
pub use server::{ApiServer, ApiTarget};
