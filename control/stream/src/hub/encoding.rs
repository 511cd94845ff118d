//! Converting the screen once and encoding it once per codec in use: the CPU-heavy part of a
//! stream, run off the async runtime by the phone actor.

use std::sync::Arc;

use cloudphone_display::{FramebufferInfo, PixelFormat};

use crate::source::Pixels;
use crate::{
    new_encoder, Codec, EncodedFrame, EncoderSettings, I420Frame, PixelLayout, StreamError,
    VideoEncoder,
};

/// One encoded frame per codec in use.
pub(super) type CodecFrames = Vec<(Codec, Arc<EncodedFrame>)>;

/// One encode of the screen for the codec viewers receive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct EncodeJob {
    pub(super) codec: Codec,
    /// A viewer of this codec joined, asked for a keyframe or missed a frame.
    pub(super) keyframe: bool,
}

/// The pixel source and encoders of a stream with viewers.
pub(super) struct Encoding {
    /// The screen geometry the encoders were set up for.
    pub(super) info: FramebufferInfo,
    pixels: Pixels,
    layout: PixelLayout,
    frame: I420Frame,
    fps: u32,
    /// One encoder per codec some connected viewer receives (created on first use).
    encoders: Vec<Box<dyn VideoEncoder>>,
}

impl Encoding {
    /// Set up for the screen laid out as `info`, read through `pixels`, at most `fps` frames/s.
    pub(super) fn open(
        info: FramebufferInfo,
        pixels: Pixels,
        fps: u32,
    ) -> Result<Self, StreamError> {
        let layout = match info.format {
            PixelFormat::B8G8R8X8 | PixelFormat::B8G8R8A8 => PixelLayout::Bgrx,
            PixelFormat::R8G8B8X8 | PixelFormat::R8G8B8A8 => PixelLayout::Rgbx,
            other => {
                return Err(StreamError::Geometry(format!(
                    "framebuffer format {other:?} is not supported (B8G8R8X8, B8G8R8A8, R8G8B8X8, R8G8B8A8 are)"
                )))
            }
        };
        // I420 (and H.264) need even sizes: drop an odd last row/column.
        let frame = I420Frame::new(info.width & !1, info.height & !1)?;
        Ok(Self {
            info,
            pixels,
            layout,
            frame,
            fps,
            encoders: Vec::new(),
        })
    }

    /// Convert the screen once and encode it for each job; encoders of codecs no job names are
    /// dropped, missing ones created at `bitrate`. Returns the frames and how many encoders
    /// were created.
    pub(super) fn encode(
        &mut self,
        jobs: &[EncodeJob],
        bitrate: u32,
        bitrate_changed: bool,
    ) -> Result<(CodecFrames, u64), StreamError> {
        self.encoders
            .retain(|e| jobs.iter().any(|j| j.codec == e.codec()));
        let (frame, stride, layout) = (&mut self.frame, self.info.stride, self.layout);
        self.pixels
            .with_frame(&self.info, |pixels| frame.fill_from(pixels, stride, layout))?;
        let mut created = 0;
        let mut frames = Vec::with_capacity(jobs.len());
        for job in jobs {
            let encoder = match self.encoders.iter().position(|e| e.codec() == job.codec) {
                Some(i) => {
                    let encoder = &mut self.encoders[i];
                    if bitrate_changed {
                        encoder.set_bitrate(bitrate)?;
                    }
                    encoder
                }
                None => {
                    let settings = EncoderSettings {
                        width: self.frame.width(),
                        height: self.frame.height(),
                        bitrate,
                        max_fps: self.fps as f32,
                    };
                    created += 1;
                    self.encoders.push(new_encoder(job.codec, settings)?);
                    self.encoders.last_mut().expect("just pushed")
                }
            };
            if job.keyframe {
                encoder.request_keyframe();
            }
            frames.push((job.codec, Arc::new(encoder.encode(&self.frame)?)));
        }
        Ok((frames, created))
    }
}
