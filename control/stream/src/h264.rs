//! Low-latency H.264 encoding with OpenH264 (constrained baseline: what every browser decodes).

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::{OpenH264API, Timestamp};
use openh264_sys2::{
    SBitrateInfo, ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0,
};

use crate::frame::MAX_DIMENSION;
use crate::{I420Frame, StreamError};

/// Bounds on the bitrate the controller may ask for (bits/s).
pub const MIN_BITRATE: u32 = 150_000;
/// See [`MIN_BITRATE`].
pub const MAX_BITRATE: u32 = 20_000_000;

/// What the encoder is created with; the bitrate changes later through
/// [`H264Encoder::set_bitrate`].
#[derive(Clone, Copy, Debug)]
pub struct H264Settings {
    /// Frame width (even).
    pub width: u32,
    /// Frame height (even).
    pub height: u32,
    /// Initial target bitrate in bits/s.
    pub bitrate: u32,
    /// The profile's fps cap (also the rate-control frame rate).
    pub max_fps: f32,
}

/// One encoded access unit in Annex-B form (start codes + NAL units), ready for RTP packetizing.
pub struct EncodedFrame {
    /// Annex-B bytes (SPS/PPS included on keyframes).
    pub data: Vec<u8>,
    /// An IDR frame a new viewer can start decoding from.
    pub keyframe: bool,
}

/// A screen-content H.264 encoder: no B-frames, one slice, SPS/PPS with every IDR, frame
/// skipping off (a damaged frame is always sent), keyframes only when asked (join, PLI).
pub struct H264Encoder {
    encoder: Encoder,
    settings: H264Settings,
    force_key: bool,
    /// Frames encoded: each is stamped `frames / fps` s, as libvpx counts VP8 frames. OpenH264's
    /// rate control budgets bits over these timestamps; with all of them zero it cannot hold
    /// the bitrate at all.
    frames: u64,
}

impl H264Settings {
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
}

impl H264Encoder {
    /// Create an encoder for `settings`.
    pub fn new(settings: H264Settings) -> Result<Self, StreamError> {
        let settings = settings.checked("H.264")?;
        let bitrate = settings.bitrate;
        let config = EncoderConfig::new()
            .usage_type(UsageType::ScreenContentRealTime)
            .profile(Profile::Baseline)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(bitrate))
            .max_frame_rate(FrameRate::from_hz(settings.max_fps.clamp(1.0, 120.0)))
            .skip_frames(false)
            .complexity(Complexity::Low)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| StreamError::Encoder(e.to_string()))?;
        Ok(Self {
            encoder,
            settings,
            force_key: true,
            frames: 0,
        })
    }

    /// The settings in force (bitrate as last set).
    pub fn settings(&self) -> H264Settings {
        self.settings
    }

    /// Make the next frame an IDR (a viewer joined, or the browser sent PLI/FIR).
    pub fn request_keyframe(&mut self) {
        self.force_key = true;
    }

    /// Change the target bitrate (clamped to [`MIN_BITRATE`]..=[`MAX_BITRATE`]); takes effect from
    /// the next frame, in the running stream (no keyframe: congestion control changes the
    /// bitrate often, and an IDR each time would cost the very bandwidth it is saving).
    pub fn set_bitrate(&mut self, bps: u32) -> Result<(), StreamError> {
        let bps = bps.clamp(MIN_BITRATE, MAX_BITRATE);
        let old = self.settings.bitrate;
        if bps == old {
            return Ok(());
        }
        if self.frames == 0 {
            // OpenH264 initialises on the first frame: until then a new encoder is the change.
            let settings = H264Settings {
                bitrate: bps,
                ..self.settings
            };
            self.encoder = Self::new(settings)?.encoder;
            self.settings = settings;
            return Ok(());
        }
        // The layer's ceiling is kept equal to its target (as at creation), so raise the
        // ceiling first when going up and lower it last when going down: the target never
        // exceeds the ceiling, which OpenH264 would refuse.
        let steps = if bps > old {
            [ENCODER_OPTION_MAX_BITRATE, ENCODER_OPTION_BITRATE]
        } else {
            [ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE]
        };
        for option in steps {
            let mut info = SBitrateInfo {
                iLayer: SPATIAL_LAYER_0,
                iBitrate: bps as i32,
            };
            // SAFETY: the encoder is initialised (a frame was encoded); `info` is the
            // SBitrateInfo both options take and outlives the call.
            let code = unsafe {
                self.encoder
                    .raw_api()
                    .set_option(option, std::ptr::addr_of_mut!(info).cast())
            };
            if code != 0 {
                return Err(StreamError::Encoder(format!(
                    "OpenH264 refused bitrate {bps} bit/s (option {option}, code {code})"
                )));
            }
        }
        self.settings.bitrate = bps;
        Ok(())
    }

    /// Encode `frame` (same size as the settings).
    pub fn encode(&mut self, frame: &I420Frame) -> Result<EncodedFrame, StreamError> {
        if frame.width() != self.settings.width || frame.height() != self.settings.height {
            return Err(StreamError::Geometry(format!(
                "frame {}x{} does not match encoder {}x{}",
                frame.width(),
                frame.height(),
                self.settings.width,
                self.settings.height
            )));
        }
        if std::mem::take(&mut self.force_key) {
            self.encoder.force_intra_frame();
        }
        let fps = f64::from(self.settings.max_fps.clamp(1.0, 120.0));
        let at = Timestamp::from_millis((self.frames as f64 * 1000.0 / fps) as u64);
        self.frames += 1;
        let stream = self
            .encoder
            .encode_at(frame, at)
            .map_err(|e| StreamError::Encoder(e.to_string()))?;
        let keyframe = matches!(stream.frame_type(), FrameType::IDR | FrameType::I);
        Ok(EncodedFrame {
            data: stream.to_vec(),
            keyframe,
        })
    }
}

impl crate::codec::VideoEncoder for H264Encoder {
    fn codec(&self) -> crate::codec::Codec {
        crate::codec::Codec::H264
    }

    fn encode(&mut self, frame: &I420Frame) -> Result<EncodedFrame, StreamError> {
        H264Encoder::encode(self, frame)
    }

    fn set_bitrate(&mut self, bps: u32) -> Result<(), StreamError> {
        H264Encoder::set_bitrate(self, bps)
    }

    fn request_keyframe(&mut self) {
        H264Encoder::request_keyframe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::psnr;
    use crate::codec::testing::phone_frame;
    use openh264::decoder::Decoder;
    use openh264::formats::YUVSource;

    #[test]
    fn encodes_decodable_h264_with_psnr_above_35_db() {
        let (w, h) = (720, 1280);
        let mut enc = H264Encoder::new(H264Settings {
            width: w,
            height: h,
            bitrate: 4_000_000,
            max_fps: 30.0,
        })
        .unwrap();
        let mut dec = Decoder::new().unwrap();
        for (n, shift) in [0u32, 7, 7].into_iter().enumerate() {
            let frame = phone_frame(w, h, shift);
            let out = enc.encode(&frame).unwrap();
            assert_eq!(out.keyframe, n == 0, "only the first frame is a keyframe");
            assert!(out.data.starts_with(&[0, 0, 0, 1]), "Annex-B start code");
            let yuv = dec
                .decode(&out.data)
                .unwrap()
                .expect("a decoded picture per access unit");
            let (dw, dh) = yuv.dimensions();
            assert_eq!((dw, dh), (w as usize, h as usize));
            let (ys, _, _) = yuv.strides();
            let decoded_y: Vec<u8> = (0..h as usize)
                .flat_map(|r| yuv.y()[r * ys..r * ys + w as usize].to_vec())
                .collect();
            let p = psnr(frame.y_plane(), &decoded_y);
            eprintln!("frame {n}: {} bytes, luma PSNR {p:.1} dB", out.data.len());
            assert!(p > 35.0, "PSNR {p:.1} dB too low");
        }
    }

    #[test]
    fn keyframe_on_request_only() {
        let mut enc = H264Encoder::new(H264Settings {
            width: 64,
            height: 64,
            bitrate: 500_000,
            max_fps: 30.0,
        })
        .unwrap();
        let frame = phone_frame(64, 64, 0);
        assert!(enc.encode(&frame).unwrap().keyframe);
        assert!(!enc.encode(&frame).unwrap().keyframe);
        enc.request_keyframe();
        assert!(enc.encode(&frame).unwrap().keyframe);
        enc.set_bitrate(250_000).unwrap();
        assert_eq!(enc.settings().bitrate, 250_000);
        assert!(
            !enc.encode(&frame).unwrap().keyframe,
            "a retune keeps the stream going"
        );
        enc.set_bitrate(1).unwrap();
        assert_eq!(enc.settings().bitrate, MIN_BITRATE, "clamped");
    }

    #[test]
    fn rejects_mismatched_and_odd_frames() {
        assert!(H264Encoder::new(H264Settings {
            width: 63,
            height: 64,
            bitrate: 1_000_000,
            max_fps: 30.0
        })
        .is_err());
        let mut enc = H264Encoder::new(H264Settings {
            width: 64,
            height: 64,
            bitrate: 1_000_000,
            max_fps: 30.0,
        })
        .unwrap();
        let frame = I420Frame::new(32, 32).unwrap();
        assert!(enc.encode(&frame).is_err());
    }
}
