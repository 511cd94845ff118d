//! Screen streaming for cloudphone: the phone's framebuffer (BGRX in shared memory, changed
//! regions announced by damage events) becomes an H.264 stream that WebRTC can carry.
//!
//! Pieces, each usable on its own:
//! - [`frame`]: SIMD BGRX/BGRA → I420 conversion into reusable planes.
//! - [`h264`]: a low-latency OpenH264 encoder (constrained baseline, no B-frames, keyframes on
//!   demand) producing Annex-B access units.
//! - [`pacer`]: encode only on damage, capped at the profile's fps, never while idle, with a
//!   keyframe on join/PLI.
//! - [`bwe`]: a bitrate controller fed by the transport's loss/REMB feedback.
//! - [`webrtc`]: one viewer's WebRTC session (str0m): SDP answer, SRTP video, input channel.

pub mod bwe;
pub mod frame;
pub mod h264;
pub mod pacer;
pub mod webrtc;

pub use bwe::BitrateController;
pub use frame::{I420Frame, PixelLayout};
pub use h264::{EncodedFrame, H264Encoder, H264Settings};
pub use pacer::EncodePacer;

/// Why a frame could not be converted or encoded.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The frame geometry cannot be encoded (odd or zero size, stride too small, buffer short).
    #[error("bad frame geometry: {0}")]
    Geometry(String),
    /// The colour conversion failed.
    #[error("BGRX to I420 conversion failed: {0}")]
    Convert(String),
    /// OpenH264 refused to create the encoder or to encode.
    #[error("H.264 encoder error: {0}")]
    Encoder(String),
    /// The WebRTC session could not be set up or failed (bad offer, socket, DTLS).
    #[error("WebRTC session: {0}")]
    Signalling(String),
}
