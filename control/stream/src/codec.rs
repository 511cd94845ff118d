//! One interface over the video encoders, so a stream can use H.264 (the default every browser
//! decodes in hardware) or VP8 (the fallback for browsers or networks where H.264 fails) and
//! switch between them without caring which it holds.

use crate::frame::MAX_DIMENSION;
use crate::{I420Frame, StreamError};

/// Lowest bitrate (bits/s) any encoder is set to: below it a phone screen is unreadable, so
/// congestion control stops lowering there.
pub const MIN_BITRATE: u32 = 150_000;
/// Highest bitrate (bits/s) any encoder is set to: more buys nothing visible on a phone screen.
pub const MAX_BITRATE: u32 = 20_000_000;

/// Which video codec an encoder produces (and so which RTP payload format carries it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 constrained baseline, Annex-B access units.
    H264,
    /// VP8, one raw VP8 frame per [`EncodedFrame`].
    Vp8,
}

/// Creation settings shared by every encoder, so a stream can create either codec from the
/// same screen; the bitrate changes later through [`VideoEncoder::set_bitrate`].
#[derive(Clone, Copy, Debug)]
pub struct EncoderSettings {
    /// Frame width (even).
    pub width: u32,
    /// Frame height (even).
    pub height: u32,
    /// Initial target bitrate in bits/s.
    pub bitrate: u32,
    /// The profile's fps cap (also the rate-control frame rate).
    pub max_fps: f32,
}

impl EncoderSettings {
    /// The settings every encoder accepts (`codec` names it in errors): even, non-zero sizes
    /// up to the frame limit (so a hostile size cannot make an encoder allocate gigabytes), a
    /// real frame rate, and the bitrate clamped to [`MIN_BITRATE`]..=[`MAX_BITRATE`].
    pub(crate) fn checked(self, codec: &str) -> Result<Self, StreamError> {
        let (w, h) = (self.width, self.height);
        if w == 0
            || h == 0
            || !w.is_multiple_of(2)
            || !h.is_multiple_of(2)
            || w > MAX_DIMENSION
            || h > MAX_DIMENSION
        {
            return Err(StreamError::Geometry(format!(
                "{w}x{h}: {codec} needs even, non-zero dimensions up to {MAX_DIMENSION}"
            )));
        }
        if !self.max_fps.is_finite() {
            return Err(StreamError::Geometry(format!(
                "frame rate {} is not a number of frames per second",
                self.max_fps
            )));
        }
        Ok(Self {
            bitrate: self.bitrate.clamp(MIN_BITRATE, MAX_BITRATE),
            ..self
        })
    }

    /// The bitrate a [`VideoEncoder::set_bitrate`] of `bps` switches to (clamped to
    /// [`MIN_BITRATE`]..=[`MAX_BITRATE`]), or `None` when the encoder already runs at it.
    pub(crate) fn retarget(&self, bps: u32) -> Option<u32> {
        let bps = bps.clamp(MIN_BITRATE, MAX_BITRATE);
        (bps != self.bitrate).then_some(bps)
    }
}

/// One compressed frame, shared (behind an `Arc`) by every viewer of its codec so a frame is
/// encoded once however many watch.
pub struct EncodedFrame {
    /// The codec's bitstream: Annex-B access unit for H.264 (SPS/PPS included on keyframes),
    /// one raw frame for VP8.
    pub data: Vec<u8>,
    /// A frame a new viewer can start decoding from.
    pub keyframe: bool,
}

/// What a stream needs from an encoder: frames in, compressed frames out, keyframes on demand
/// and bitrate changes from the congestion controller.
pub trait VideoEncoder: Send {
    /// The codec of the frames [`VideoEncoder::encode`] returns.
    fn codec(&self) -> Codec;
    /// Encode `frame` (same size as the settings the encoder was created with).
    fn encode(&mut self, frame: &I420Frame) -> Result<EncodedFrame, StreamError>;
    /// Change the target bitrate in bits/s (clamped to [`MIN_BITRATE`]..=[`MAX_BITRATE`]);
    /// takes effect from the next frame, without a keyframe.
    fn set_bitrate(&mut self, bps: u32) -> Result<(), StreamError>;
    /// Make the next encoded frame a keyframe (a viewer joined, or PLI/FIR arrived).
    fn request_keyframe(&mut self);
}

/// Peak signal-to-noise ratio of plane `b` against plane `a` in dB (99 when identical): how
/// the encoder tests and the stream benchmark judge picture quality.
///
/// # Panics
/// When the planes differ in length.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "planes of different sizes");
    let sq: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let mse = sq / a.len() as f64;
    if mse == 0.0 {
        return 99.0;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// Test material shared by the encoder tests: a phone-like screen.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{I420Frame, PixelLayout};

    /// A `w`×`h` BGRX phone screen scrolled by `shift` rows: flat status bar and background,
    /// a vertical colour gradient banner, and text-like lines of small dark glyphs (sharp
    /// edges, the hardest part for a video codec).
    pub(crate) fn phone_screen(w: u32, h: u32, shift: u32) -> Vec<u8> {
        let mut px = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h {
            let sy = y + shift;
            for x in 0..w {
                let (b, g, r) = if y < h / 24 {
                    (30, 30, 30)
                } else if sy % 400 < 120 {
                    let t = (sy % 400) * 2;
                    ((40 + t / 2) as u8, (90 + t / 3) as u8, (200 - t / 3) as u8)
                } else if sy % 24 < 14
                    && !(x / 7 + sy / 24).is_multiple_of(5)
                    && x % 7 < 5
                    && x > 16
                {
                    (50, 50, 60)
                } else {
                    (250, 245, 240)
                };
                px.extend_from_slice(&[b, g, r, 255]);
            }
        }
        px
    }

    /// A `w`×`h` frame of grey noise, different for every `seed`: content no bitrate budget
    /// covers, so the encoded size shows what rate control allows.
    pub(crate) fn noise_frame(w: u32, h: u32, seed: u32) -> I420Frame {
        let mut state = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let px: Vec<u8> = (0..w * h)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let v = (state >> 56) as u8;
                [v, v, v, 255]
            })
            .collect();
        let mut frame = I420Frame::new(w, h).unwrap();
        frame.fill_from(&px, w * 4, PixelLayout::Bgrx).unwrap();
        frame
    }

    /// The I420 form of [`phone_screen`].
    pub(crate) fn phone_frame(w: u32, h: u32, shift: u32) -> I420Frame {
        let mut frame = I420Frame::new(w, h).unwrap();
        frame
            .fill_from(&phone_screen(w, h, shift), w * 4, PixelLayout::Bgrx)
            .unwrap();
        frame
    }
}
