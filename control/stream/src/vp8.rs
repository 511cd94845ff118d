//! Low-latency VP8 encoding with libvpx: the fallback codec for browsers or paths where H.264
//! is unavailable. Another implementation of [`crate::codec::VideoEncoder`], beside H.264.
//!
//! libvpx is reached through `vp8_shim.c` (built by `build.rs` against the system headers), so
//! no libvpx struct layout is written down in Rust.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_uint};
use std::ptr::NonNull;

use openh264::formats::YUVSource;

use crate::codec::{Codec, EncodedFrame, EncoderSettings, VideoEncoder};
use crate::{I420Frame, StreamError};

/// libvpx realtime speed. Negative means "fixed speed |n|" (no adaptive speed changes, so the
/// per-frame cost is predictable); 6 is WebRTC's desktop choice for one core.
const CPU_USED: c_int = -6;

/// The shim's encoder handle (opaque to Rust).
#[repr(C)]
struct RawEncoder {
    _opaque: [u8; 0],
}

extern "C" {
    fn cp_vp8_enc_new(
        width: c_uint,
        height: c_uint,
        kbps: c_uint,
        fps: c_uint,
        cpu_used: c_int,
        out: *mut *mut RawEncoder,
    ) -> c_int;
    fn cp_vp8_enc_set_bitrate(enc: *mut RawEncoder, kbps: c_uint) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn cp_vp8_enc_encode(
        enc: *mut RawEncoder,
        y: *const u8,
        u: *const u8,
        v: *const u8,
        y_stride: c_int,
        uv_stride: c_int,
        force_key: c_int,
        data: *mut *const u8,
        len: *mut usize,
        key: *mut c_int,
    ) -> c_int;
    fn cp_vp8_enc_error_detail(enc: *mut RawEncoder) -> *const c_char;
    fn cp_vp8_enc_free(enc: *mut RawEncoder);
    fn vpx_codec_err_to_string(err: c_int) -> *const c_char;
}

/// A libvpx error code (and the context's detail, when there is one) as a [`StreamError`].
fn vpx_error(what: &str, code: c_int, detail: *const c_char) -> StreamError {
    // SAFETY: libvpx returns static NUL-terminated strings for every code; `detail` is null or
    // a NUL-terminated string owned by the codec context, read before the next call into it.
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let reason = text(unsafe { vpx_codec_err_to_string(code) });
    let detail = text(detail);
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    };
    StreamError::Encoder(format!("VP8 {what}: libvpx: {reason}{detail}"))
}

/// A realtime VP8 encoder tuned like WebRTC's: one pass CBR, no lag, no frame dropping,
/// error resilient (a lost delta frame does not poison later ones), screen-content mode,
/// keyframes only when asked (join, PLI), bitrate changes without a keyframe.
pub struct Vp8Encoder {
    raw: NonNull<RawEncoder>,
    settings: EncoderSettings,
    force_key: bool,
}

// SAFETY: a libvpx context has no thread affinity; it is only touched through `&mut self`.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    /// Create an encoder for `settings` (even, non-zero width and height up to 8192; bitrate
    /// clamped to the bounds in [`crate::codec`]; fps cap 1..=120).
    pub fn new(settings: EncoderSettings) -> Result<Self, StreamError> {
        let settings = settings.checked("VP8")?;
        let (w, h, bitrate) = (settings.width, settings.height, settings.bitrate);
        let fps = settings.max_fps.clamp(1.0, 120.0).round() as c_uint;
        let mut raw = std::ptr::null_mut();
        // SAFETY: plain integers in, a fresh handle (or null on error) out.
        let code = unsafe { cp_vp8_enc_new(w, h, bitrate / 1000, fps, CPU_USED, &mut raw) };
        let raw = match NonNull::new(raw) {
            Some(raw) if code == 0 => raw,
            _ => return Err(vpx_error("encoder setup", code, std::ptr::null())),
        };
        Ok(Self {
            raw,
            settings,
            force_key: true,
        })
    }

    /// The settings in force (bitrate as last set).
    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }

    fn error(&self, what: &str, code: c_int) -> StreamError {
        // SAFETY: `raw` is a live handle owned by self.
        vpx_error(what, code, unsafe {
            cp_vp8_enc_error_detail(self.raw.as_ptr())
        })
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: `raw` came from cp_vp8_enc_new and is freed exactly once, here.
        unsafe { cp_vp8_enc_free(self.raw.as_ptr()) }
    }
}

impl VideoEncoder for Vp8Encoder {
    fn codec(&self) -> Codec {
        Codec::Vp8
    }

    /// Make the next frame a keyframe (a viewer joined, or the browser sent PLI/FIR).
    fn request_keyframe(&mut self) {
        self.force_key = true;
    }

    /// Change the target bitrate (clamped to the bounds in [`crate::codec`]); takes effect
    /// from the next frame, without a keyframe.
    fn set_bitrate(&mut self, bps: u32) -> Result<(), StreamError> {
        let Some(bps) = self.settings.retarget(bps) else {
            return Ok(());
        };
        // SAFETY: `raw` is a live handle owned by self.
        let code = unsafe { cp_vp8_enc_set_bitrate(self.raw.as_ptr(), bps / 1000) };
        if code != 0 {
            return Err(self.error("bitrate change", code));
        }
        self.settings.bitrate = bps;
        Ok(())
    }

    /// Encode `frame` (same size as the settings) into one VP8 frame.
    fn encode(&mut self, frame: &I420Frame) -> Result<EncodedFrame, StreamError> {
        let (w, h) = (self.settings.width, self.settings.height);
        if frame.width() != w || frame.height() != h {
            return Err(StreamError::Geometry(format!(
                "frame {}x{} does not match encoder {w}x{h}",
                frame.width(),
                frame.height(),
            )));
        }
        let (y_stride, uv_stride, _) = frame.strides();
        let (mut data, mut len, mut key) = (std::ptr::null(), 0usize, 0);
        // SAFETY: the planes belong to `frame`, which has the encoder's size (checked above)
        // and I420 strides width and width/2 (both <= 8192, so they fit c_int); libvpx only
        // reads them. The output pointer stays valid until the next call on `raw`.
        let code = unsafe {
            cp_vp8_enc_encode(
                self.raw.as_ptr(),
                frame.y().as_ptr(),
                frame.u().as_ptr(),
                frame.v().as_ptr(),
                y_stride as c_int,
                uv_stride as c_int,
                c_int::from(self.force_key),
                &mut data,
                &mut len,
                &mut key,
            )
        };
        if code != 0 {
            return Err(self.error("encode", code));
        }
        if data.is_null() || len == 0 {
            return Err(StreamError::Encoder(
                "VP8 encoder produced no frame (frame dropping is off: libvpx misbehaved)".into(),
            ));
        }
        // SAFETY: the shim returned `len` initialised bytes at `data`, alive until the next
        // call on `raw`; they are copied out before that.
        let data = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        self.force_key = false;
        Ok(EncodedFrame {
            data,
            keyframe: key != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::psnr;
    use crate::codec::testing::phone_frame;
    use crate::codec::{MAX_BITRATE, MIN_BITRATE};
    use proptest::prelude::*;

    #[repr(C)]
    struct RawDecoder {
        _opaque: [u8; 0],
    }

    extern "C" {
        fn cp_vp8_dec_new(out: *mut *mut RawDecoder) -> c_int;
        fn cp_vp8_dec_free(dec: *mut RawDecoder);
        #[allow(clippy::too_many_arguments)]
        fn cp_vp8_dec_decode(
            dec: *mut RawDecoder,
            data: *const u8,
            len: usize,
            width: c_uint,
            height: c_uint,
            y: *mut u8,
            u: *mut u8,
            v: *mut u8,
        ) -> c_int;
    }

    /// libvpx's VP8 decoder (what a browser runs) returning whole I420 pictures.
    struct Decoder(NonNull<RawDecoder>);

    impl Decoder {
        fn new() -> Self {
            let mut raw = std::ptr::null_mut();
            assert_eq!(unsafe { cp_vp8_dec_new(&mut raw) }, 0);
            Self(NonNull::new(raw).unwrap())
        }

        /// Decode `data` as a `w`×`h` picture: (Y, U, V) planes, or the libvpx error code.
        fn decode(&mut self, data: &[u8], w: u32, h: u32) -> Result<[Vec<u8>; 3], c_int> {
            let (luma, chroma) = ((w * h) as usize, (w * h / 4) as usize);
            let mut planes = [vec![0; luma], vec![0; chroma], vec![0; chroma]];
            let [y, u, v] = &mut planes;
            let code = unsafe {
                cp_vp8_dec_decode(
                    self.0.as_ptr(),
                    data.as_ptr(),
                    data.len(),
                    w,
                    h,
                    y.as_mut_ptr(),
                    u.as_mut_ptr(),
                    v.as_mut_ptr(),
                )
            };
            if code == 0 {
                Ok(planes)
            } else {
                Err(code)
            }
        }
    }

    impl Drop for Decoder {
        fn drop(&mut self) {
            unsafe { cp_vp8_dec_free(self.0.as_ptr()) }
        }
    }

    fn encoder(w: u32, h: u32, bitrate: u32) -> Vp8Encoder {
        Vp8Encoder::new(EncoderSettings {
            width: w,
            height: h,
            bitrate,
            max_fps: 30.0,
        })
        .unwrap()
    }

    /// The VP8 frame tag says keyframe (bit 0 clear) and, for keyframes, the start code follows.
    fn bitstream_says_key(data: &[u8]) -> bool {
        data[0] & 1 == 0 && data.get(3..6) == Some(&[0x9d, 0x01, 0x2a][..])
    }

    #[test]
    fn decodes_to_the_source_with_psnr_above_35_db() {
        let (w, h) = (720, 1280);
        let mut enc = encoder(w, h, 4_000_000);
        let mut dec = Decoder::new();
        for (n, shift) in [0u32, 0, 8, 16, 40].into_iter().enumerate() {
            let frame = phone_frame(w, h, shift);
            let out = enc.encode(&frame).unwrap();
            assert_eq!(
                out.keyframe,
                n == 0,
                "frame {n}: only the first is a keyframe"
            );
            assert_eq!(bitstream_says_key(&out.data), n == 0);
            let [y, u, v] = dec.decode(&out.data, w, h).unwrap();
            let (py, pu, pv) = (
                psnr(frame.y(), &y),
                psnr(frame.u(), &u),
                psnr(frame.v(), &v),
            );
            eprintln!(
                "vp8 frame {n}: {} bytes, PSNR Y {py:.1} U {pu:.1} V {pv:.1} dB",
                out.data.len()
            );
            assert!(
                py > 35.0 && pu > 35.0 && pv > 35.0,
                "frame {n} PSNR too low"
            );
        }
    }

    #[test]
    fn requested_keyframe_is_a_keyframe_a_fresh_decoder_can_start_from() {
        let (w, h) = (320, 480);
        let mut enc = encoder(w, h, 1_000_000);
        for shift in 0..5 {
            enc.encode(&phone_frame(w, h, shift * 4)).unwrap();
        }
        let delta = enc.encode(&phone_frame(w, h, 24)).unwrap();
        assert!(!delta.keyframe && !bitstream_says_key(&delta.data));
        assert!(
            Decoder::new().decode(&delta.data, w, h).is_err(),
            "a delta frame alone must not decode"
        );
        enc.request_keyframe();
        let frame = phone_frame(w, h, 28);
        let key = enc.encode(&frame).unwrap();
        assert!(key.keyframe && bitstream_says_key(&key.data));
        let [y, ..] = Decoder::new().decode(&key.data, w, h).unwrap();
        assert!(psnr(frame.y(), &y) > 35.0);
        assert!(
            !enc.encode(&phone_frame(w, h, 32)).unwrap().keyframe,
            "one-shot"
        );
    }

    /// Mean encoded size of `frames` scrolling frames starting at scroll offset `from`.
    fn mean_size(enc: &mut Vp8Encoder, from: u32, frames: u32) -> usize {
        let (w, h) = (enc.settings().width, enc.settings().height);
        let total: usize = (from..from + frames)
            .map(|i| enc.encode(&phone_frame(w, h, i * 6)).unwrap().data.len())
            .sum();
        total / frames as usize
    }

    #[test]
    fn lowering_the_bitrate_shrinks_frames_without_a_keyframe() {
        let mut enc = encoder(360, 640, 3_000_000);
        mean_size(&mut enc, 0, 10); // let rate control settle
        let high = mean_size(&mut enc, 10, 20);
        enc.set_bitrate(300_000).unwrap();
        assert_eq!(enc.settings().bitrate, 300_000);
        let first_low = enc.encode(&phone_frame(360, 640, 30 * 6)).unwrap();
        assert!(!first_low.keyframe, "a bitrate change needs no keyframe");
        mean_size(&mut enc, 31, 10);
        let low = mean_size(&mut enc, 41, 20);
        eprintln!("vp8 mean frame at 3 Mbit/s: {high} bytes, at 300 kbit/s: {low} bytes");
        assert!(
            low * 2 < high,
            "300 kbit/s frames ({low} B) not well below 3 Mbit/s ({high} B)"
        );
        // at 30 fps, 300 kbit/s is 1250 bytes a frame; allow CBR overshoot
        assert!(
            low < 2500,
            "{low} bytes/frame ignores the 300 kbit/s target"
        );
    }

    #[test]
    fn rejects_bad_geometry_and_mismatched_frames() {
        for (w, h) in [
            (0, 0),
            (0, 64),
            (63, 64),
            (64, 63),
            (8194, 64),
            (64, u32::MAX),
        ] {
            let err = Vp8Encoder::new(EncoderSettings {
                width: w,
                height: h,
                bitrate: 1_000_000,
                max_fps: 30.0,
            });
            assert!(matches!(err, Err(StreamError::Geometry(_))), "{w}x{h}");
        }
        let nan_fps = EncoderSettings {
            width: 64,
            height: 64,
            bitrate: 1_000_000,
            max_fps: f32::NAN,
        };
        assert!(Vp8Encoder::new(nan_fps).is_err());
        let widest = EncoderSettings {
            width: 8192,
            height: 2,
            max_fps: 30.0,
            ..nan_fps
        };
        assert!(
            Vp8Encoder::new(widest).is_ok(),
            "8192 is the inclusive limit"
        );
        let mut enc = encoder(64, 64, 1_000_000);
        assert!(matches!(
            enc.encode(&I420Frame::new(32, 32).unwrap()),
            Err(StreamError::Geometry(_))
        ));
        // the failed call did not consume the pending first keyframe
        assert!(enc.encode(&phone_frame(64, 64, 0)).unwrap().keyframe);
        enc.set_bitrate(0).unwrap();
        assert_eq!(enc.settings().bitrate, MIN_BITRATE);
        enc.set_bitrate(u32::MAX).unwrap();
        assert_eq!(enc.settings().bitrate, MAX_BITRATE);
        assert!(!enc.encode(&phone_frame(64, 64, 2)).unwrap().data.is_empty());
    }

    #[test]
    fn garbage_does_not_decode() {
        let mut dec = Decoder::new();
        assert!(dec.decode(&[0xff; 64], 64, 64).is_err());
        assert!(dec.decode(&[], 64, 64).is_err());
    }

    #[test]
    fn fuzz_encoder_settings_never_panic() {
        let cases = 48;
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
        let dims = prop_oneof![0u32..200, Just(8193u32), any::<u32>()];
        let strategy = (dims.clone(), dims, any::<u32>(), any::<f32>());
        runner
            .run(&strategy, |(w, h, bitrate, max_fps)| {
                let settings = EncoderSettings {
                    width: w,
                    height: h,
                    bitrate,
                    max_fps,
                };
                let valid = w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0 && w <= 8192 && h <= 8192;
                match Vp8Encoder::new(settings) {
                    Ok(mut enc) => {
                        prop_assert!(valid && max_fps.is_finite());
                        if w <= 200 && h <= 200 {
                            let out = enc.encode(&I420Frame::new(w, h).unwrap()).unwrap();
                            prop_assert!(out.keyframe);
                        }
                    }
                    Err(_) => prop_assert!(!valid || !max_fps.is_finite()),
                }
                Ok(())
            })
            .unwrap();
        eprintln!("fuzz vp8 encoder settings: {cases} cases");
    }
}
