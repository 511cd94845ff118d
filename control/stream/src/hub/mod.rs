//! One stream per phone, shared by all its viewers (the lease holder plus operators watching):
//! damage events from the VMM drive the pacer, each frame is converted once and encoded once per
//! codec in use (H.264, plus VP8 only while a viewer negotiated VP8), and the same
//! `Arc<EncodedFrame>` goes to every viewer of that codec. Nothing is encoded while no viewer is
//! connected or the screen is idle. Only viewers granted input may touch the phone.
//!
//! One concern per file: `registry` (the hub: phone id → running stream), `phone` (the
//! per-phone actor: viewers, damage, pacing, bitrate, fan-out), `encoding` (convert once,
//! encode per codec), `stats` (counters and latency windows) and `input` (typed input from
//! the lease holder, forwarded to the VMM in order).

mod encoding;
mod input;
mod phone;
mod registry;
mod stats;
#[cfg(test)]
mod tests;

pub use registry::{StreamHub, ViewerOptions};
pub use stats::{LatencyWindow, StreamStats};
