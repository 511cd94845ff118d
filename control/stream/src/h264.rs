//! Low-latency H.264 encoding with OpenH264 (constrained baseline: what every browser decodes).

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::{OpenH264API, Timestamp};
use openh264_sys2::{
    SBitrateInfo, ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0,
};

use crate::codec::{Codec, EncodedFrame, EncoderSettings, VideoEncoder};
use crate::{I420Frame, StreamError};

/// A screen-content H.264 encoder: no B-frames, one slice, SPS/PPS with every IDR, frame
/// skipping off (a damaged frame is always sent), keyframes only when asked (join, PLI).
pub struct H264Encoder {
    encoder: Encoder,
    settings: EncoderSettings,
    force_key: bool,
    /// Frames encoded: each is stamped `frames / fps` s, as libvpx counts VP8 frames. OpenH264's
    /// rate control budgets bits over these timestamps; with all of them zero it cannot hold
    /// the bitrate at all.
    frames: u64,
}

impl H264Encoder {
    /// Create an encoder for `settings`.
    pub fn new(settings: EncoderSettings) -> Result<Self, StreamError> {
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
    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }
}

impl VideoEncoder for H264Encoder {
    fn codec(&self) -> Codec {
        Codec::H264
    }

    /// Make the next frame an IDR (a viewer joined, or the browser sent PLI/FIR).
    fn request_keyframe(&mut self) {
        self.force_key = true;
    }

    /// Change the target bitrate (clamped to the bounds in [`crate::codec`]); takes effect from
    /// the next frame, in the running stream (no keyframe: congestion control changes the
    /// bitrate often, and an IDR each time would cost the very bandwidth it is saving).
    fn set_bitrate(&mut self, bps: u32) -> Result<(), StreamError> {
        let Some(bps) = self.settings.retarget(bps) else {
            return Ok(());
        };
        let old = self.settings.bitrate;
        if self.frames == 0 {
            // OpenH264 initialises on the first frame: until then a new encoder is the change.
            let settings = EncoderSettings {
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
    fn encode(&mut self, frame: &I420Frame) -> Result<EncodedFrame, StreamError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::psnr;
    use crate::codec::testing::phone_frame;
    use crate::codec::MIN_BITRATE;
    use openh264::decoder::Decoder;
    use openh264::formats::YUVSource;

    #[test]
    fn encodes_decodable_h264_with_psnr_above_35_db() {
        let (w, h) = (720, 1280);
        let mut enc = H264Encoder::new(EncoderSettings {
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
        let mut enc = H264Encoder::new(EncoderSettings {
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
        assert!(H264Encoder::new(EncoderSettings {
            width: 63,
            height: 64,
            bitrate: 1_000_000,
            max_fps: 30.0
        })
        .is_err());
        let mut enc = H264Encoder::new(EncoderSettings {
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
