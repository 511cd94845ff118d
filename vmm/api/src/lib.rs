//! The per-VM API (vmm/API.md) as Rust: the paths, the JSON bodies the VMM reads and writes,
//! and (feature `client`) the one typed client every caller uses — the host agent, the
//! streaming crate and the end-to-end tests. The VMM's server side uses the same types, so a
//! field renamed on one side cannot silently break the other.

#[cfg(feature = "client")]
mod client;
mod types;

#[cfg(feature = "client")]
pub use client::{rustls, DamageStream, Error, VmmApi};
pub use cloudphone_display::FramebufferInfo;
pub use types::{path, BalloonRequest, DamageEvent, ShutdownRequest, SnapshotRequest, StatusReply};
