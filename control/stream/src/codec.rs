//! One interface over the video encoders, so a stream can use H.264 (the default every browser
//! decodes in hardware) or VP8 (the fallback for browsers or networks where H.264 fails) and
//! switch between them without caring which it holds.

use crate::h264::{EncodedFrame, H264Encoder};
use crate::vp8::Vp8Encoder;
use crate::{I420Frame, StreamError};

/// Creation settings shared by every encoder (size, initial bitrate, fps cap).
pub use crate::h264::H264Settings as EncoderSettings;

/// Which video codec an encoder produces (and so which RTP payload format carries it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// H.264 constrained baseline, Annex-B access units.
    H264,
    /// VP8, one raw VP8 frame per [`EncodedFrame`].
    Vp8,
}

/// What a stream needs from an encoder: frames in, compressed frames out, keyframes on demand
/// and bitrate changes from the congestion controller.
pub trait VideoEncoder: Send {
    /// The codec of the frames [`VideoEncoder::encode`] returns.
    fn codec(&self) -> Codec;
    /// Encode `frame` (same size as the settings the encoder was created with).
    fn encode(&mut self, frame: &I420Frame) -> Result<EncodedFrame, StreamError>;
    /// Change the target bitrate in bits/s (clamped to the crate's bounds).
    fn set_bitrate(&mut self, bps: u32) -> Result<(), StreamError>;
    /// Make the next encoded frame a keyframe (a viewer joined, or PLI/FIR arrived).
    fn request_keyframe(&mut self);
}

/// Create an encoder for `codec`, boxed so the caller can swap codecs at runtime.
pub fn new_encoder(
    codec: Codec,
    settings: EncoderSettings,
) -> Result<Box<dyn VideoEncoder>, StreamError> {
    Ok(match codec {
        Codec::H264 => Box::new(H264Encoder::new(settings)?),
        Codec::Vp8 => Box::new(Vp8Encoder::new(settings)?),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_builds_each_codec_and_both_encode_keyframes_first() {
        let settings = EncoderSettings {
            width: 64,
            height: 48,
            bitrate: 500_000,
            max_fps: 30.0,
        };
        let frame = I420Frame::new(64, 48).unwrap();
        for codec in [Codec::H264, Codec::Vp8] {
            let mut enc = new_encoder(codec, settings).unwrap();
            assert_eq!(enc.codec(), codec);
            let first = enc.encode(&frame).unwrap();
            assert!(first.keyframe && !first.data.is_empty(), "{codec:?}");
            assert!(!enc.encode(&frame).unwrap().keyframe, "{codec:?}");
            enc.set_bitrate(300_000).unwrap();
            enc.request_keyframe();
            assert!(enc.encode(&frame).unwrap().keyframe, "{codec:?}");
        }
    }

    /// Bits of one second at 30 fps of `scene` (frame `n` of a `w`×`h` stream): the encoder
    /// starts at `initial` b/s, is retuned to `bitrate` after a second, and the third second is
    /// counted (rate control has settled). Also returns how many frames after the first were
    /// keyframes.
    fn settled_bits(
        codec: Codec,
        (w, h): (u32, u32),
        scene: fn(u32, u32, u32) -> I420Frame,
        initial: u32,
        bitrate: u32,
    ) -> (usize, usize) {
        let settings = EncoderSettings {
            width: w,
            height: h,
            bitrate: initial,
            max_fps: 30.0,
        };
        let mut enc = new_encoder(codec, settings).unwrap();
        let (mut bits, mut keyframes) = (0, 0);
        for n in 0..121 {
            if n == 30 {
                enc.set_bitrate(bitrate).unwrap();
            }
            let f = enc.encode(&scene(w, h, n)).unwrap();
            keyframes += usize::from(f.keyframe && n > 0);
            bits += if n >= 91 { f.data.len() * 8 } else { 0 };
        }
        (bits, keyframes)
    }

    /// Screen content at 720x1280 needs far more than these budgets unconstrained (the test
    /// screen scrolls 8 rows a frame); VP8's lowest quality still needs more than H.264's, so
    /// its budget is higher. The encoder starts generous and is retuned down, as congestion
    /// control does: the stream goes on without a keyframe.
    #[test]
    fn rate_control_holds_the_bitrate_it_is_given() {
        let scroll = |w, h, n| testing::phone_frame(w, h, n * 8);
        for (codec, budget) in [(Codec::H264, 200_000), (Codec::Vp8, 600_000)] {
            let (bits, keyframes) = settled_bits(codec, (720, 1280), scroll, 8_000_000, budget);
            eprintln!("{codec:?}: {bits} bits/s at a {budget} b/s target");
            assert_eq!(keyframes, 0, "{codec:?}: keyframes after a retune");
            assert!(
                bits * 2 <= budget as usize * 3,
                "{codec:?}: {bits} bits in 1 s at a {budget} b/s target"
            );
        }
    }

    /// Congestion control retunes a running encoder, down and up: it settles where an encoder
    /// created at the new bitrate would be. Noise is content whose size follows the budget
    /// over this whole range (every frame is a scene change, so keyframes are not counted).
    #[test]
    fn retuned_encoder_settles_like_one_created_at_that_bitrate() {
        let (low, high) = (1_000_000, 6_000_000);
        for codec in [Codec::H264, Codec::Vp8] {
            let bits = |from, to| settled_bits(codec, (320, 240), testing::noise_frame, from, to).0;
            let (at_low, at_high) = (bits(low, low), bits(high, high));
            let (down, up) = (bits(high, low), bits(low, high));
            eprintln!("{codec:?}: {at_low} b/s at {low}, {at_high} at {high}; retuned down {down}, up {up}");
            assert!(
                at_high * 10 >= at_low * 13,
                "{codec:?}: the budget makes no difference"
            );
            for (retuned, fresh) in [(down, at_low), (up, at_high)] {
                assert!(
                    retuned.abs_diff(fresh) * 5 <= fresh,
                    "{codec:?}: retuned {retuned} b/s, created at that bitrate {fresh}"
                );
            }
        }
    }
}
