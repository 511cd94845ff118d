//! Screen streaming for cloudphone: the phone's framebuffer (BGRX in shared memory, changed
//! regions announced by damage events) becomes an H.264 or VP8 stream that WebRTC can carry.
//!
//! Pieces, each usable on its own:
//! - [`frame`]: SIMD BGRX/BGRA → I420 conversion into reusable planes.
//! - [`codec`]: the interface every video encoder implements ([`VideoEncoder`]) and the types
//!   they share (settings, encoded frames, bitrate bounds); [`encoders`] picks the
//!   implementation for a [`Codec`].
//! - [`h264`]: a low-latency OpenH264 encoder (constrained baseline, no B-frames, keyframes on
//!   demand) producing Annex-B access units: the default, decoded in hardware by every browser.
//! - [`vp8`]: a realtime libvpx VP8 encoder, for browsers or networks where H.264 fails.
//! - [`pacer`]: encode only on damage, capped at the profile's fps, never while idle, with a
//!   keyframe on join/PLI.
//! - [`bwe`]: a bitrate controller fed by the transport's loss/REMB feedback.
//! - [`webrtc`]: one viewer's WebRTC session (str0m): SDP answer (H.264 preferred, VP8 when
//!   that is all the browser offers), SRTP video, input channel.
//! - [`input`]: the input channel's messages, checked once on arrival and turned into the
//!   VMM's `PUT /input` body in screen pixels.
//! - [`hub`]: one stream per phone shared by all its viewers (damage → encode once per codec
//!   → fan out), input from the lease holder forwarded to the VMM.
//! - [`revocation`]: how the control service ends a granted session when its lease ends.
//! - [`signalling`]: the `GET /api/v1/phones/{id}/stream` WebSocket (SDP offer/answer, ICE
//!   server config), authorised by the control service through [`signalling::StreamAuthorizer`].
//! - [`source`]: where a phone's screen comes from: its VMM's socket here, or a host agent's
//!   [`relay`] when the VMM runs elsewhere.
//! - [`web`]: serves the static web UI directory (`control/web`).

pub mod bwe;
pub mod codec;
pub mod confine;
pub mod encoders;
pub mod frame;
pub mod h264;
pub mod hub;
pub mod input;
pub mod pacer;
pub mod relay;
pub mod revocation;
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
pub use codec::{Codec, EncodedFrame, EncoderSettings, VideoEncoder};
pub use confine::Confinement;
pub use encoders::new_encoder;
pub use frame::{I420Frame, PixelLayout};
pub use h264::H264Encoder;
pub use hub::{StreamHub, StreamStats, ViewerOptions};
pub use pacer::EncodePacer;
pub use revocation::{Revocation, Revoker};
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
