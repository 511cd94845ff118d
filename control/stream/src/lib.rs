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
//! - [`hub`]: one stream per phone shared by all its viewers (damage → encode once → fan out),
//!   input from the lease holder forwarded to the VMM.
//! - [`signalling`]: the `GET /api/v1/phones/{id}/stream` WebSocket (SDP offer/answer, ICE
//!   server config), authorised by the control service through [`signalling::StreamAuthorizer`].
//! - [`source`]: where a phone's screen comes from: its VMM's socket here, or a host agent's
//!   [`relay`] when the VMM runs elsewhere.
//! - [`web`]: serves the static web UI directory (`control/web`).

pub mod bwe;
pub mod codec;
pub mod frame;
pub mod h264;
pub mod hub;
pub mod input;
pub mod pacer;
pub mod relay;
pub mod signalling;
pub mod source;
pub mod vp8;
pub mod web;
pub mod webrtc;

#[cfg(test)]
mod browser_tests;
#[cfg(test)]
mod fake_vmm;

pub use bwe::BitrateController;
pub use codec::{new_encoder, Codec, EncoderSettings, VideoEncoder};
pub use frame::{I420Frame, PixelLayout};
pub use h264::{EncodedFrame, H264Encoder, H264Settings};
pub use hub::{StreamHub, StreamStats, ViewerOptions};
pub use pacer::EncodePacer;
pub use signalling::{IceServer, SignallingConfig, StreamAuthorizer, StreamDenied, StreamGrant};
pub use source::ScreenSource;

/// Lock `m`, recovering from poisoning: the data behind this crate's mutexes (stream registry,
/// latency samples, a mirrored screen) stays usable after a panic elsewhere.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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
    #[error("video encoder error: {0}")]
    Encoder(String),
    /// The WebRTC session could not be set up or failed (bad offer, socket, DTLS).
    #[error("WebRTC session: {0}")]
    Signalling(String),
    /// The phone's VMM API could not be reached or answered nonsense.
    #[error("VMM API {0}")]
    Vmm(String),
}

/// Calls through the shared VMM API client report as [`StreamError::Vmm`], as before the
/// client moved into its own crate.
impl From<cloudphone_vmm_api::Error> for StreamError {
    fn from(e: cloudphone_vmm_api::Error) -> Self {
        StreamError::Vmm(e.to_string())
    }
}
