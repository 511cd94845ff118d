//! The encoder behind a [`Codec`]: the one place that knows every implementation, so
//! [`crate::codec`] stays the interface the implementations depend on (never the reverse).

use crate::codec::{Codec, EncoderSettings, VideoEncoder};
use crate::h264::H264Encoder;
use crate::vp8::Vp8Encoder;
use crate::StreamError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::testing;
    use crate::I420Frame;

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
