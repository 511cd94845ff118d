//! Streaming cost per frame at phone resolution (720×1280): BGRX→I420 conversion, VP8 (libvpx,
//! the fallback) and H.264 (OpenH264, the default) encoding of a scrolling phone-like screen,
//! single-threaded (one encoder per phone).
//!
//! `cargo run --release -p cloudphone-stream --example stream_bench -- [FRAMES]`; the last line
//! is `ratio: encode-720p-ms <H.264 ms/5> (target <= 1)` (5 ms per frame budget).

use std::time::{Duration, Instant};

use cloudphone_stream::codec::{psnr, Codec, EncoderSettings};
use cloudphone_stream::encoders::new_encoder;
use cloudphone_stream::{I420Frame, PixelLayout};

const WIDTH: u32 = 720;
const HEIGHT: u32 = 1280;

/// A phone-like screen (status bar, icon grid, text lines) scrolled by `shift` rows.
fn screen(shift: u32) -> Vec<u8> {
    let mut px = vec![0u8; (WIDTH * HEIGHT * 4) as usize];
    for y in 0..HEIGHT {
        let sy = y + shift;
        for x in 0..WIDTH {
            let (b, g, r) = if y < 48 {
                (30, 30, 30)
            } else if (x / 120 + sy / 160).is_multiple_of(2) && x % 120 > 20 && sy % 160 > 30 {
                ((x * 3 % 256) as u8, 120, (sy % 256) as u8)
            } else if sy % 24 < 2
                || (sy % 24 < 14 && !(x / 7 + sy / 24).is_multiple_of(5) && x % 7 < 5)
            {
                (60, 60, 70)
            } else {
                (250, 245, 240)
            };
            let i = ((y * WIDTH + x) * 4) as usize;
            px[i..i + 4].copy_from_slice(&[b, g, r, 255]);
        }
    }
    px
}

fn ms(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1000.0 / n as f64
}

/// CPU time this thread has used: unlike wall time it does not grow when other processes
/// share the core, so figures stay comparable on a loaded host.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; this clock exists on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What encoding `frames` scrolling screens cost one codec.
struct EncodeCost {
    all_ms: f64,
    cpu_ms: f64,
    delta_ms: f64,
    key_ms: f64,
    keys: usize,
    kbit_per_frame: f64,
    /// Mean luma PSNR of the decoded frames against the source (H.264 only; OpenH264 decodes).
    psnr_db: Option<f64>,
}

/// Decode one H.264 access unit and return its luma PSNR against `source`'s.
fn h264_psnr(
    decoder: &mut openh264::decoder::Decoder,
    data: &[u8],
    source: &I420Frame,
) -> Result<f64, Box<dyn std::error::Error>> {
    use openh264::formats::YUVSource;
    let picture = decoder
        .decode(data)?
        .ok_or("the decoder returned no picture")?;
    let (w, h) = picture.dimensions();
    let (stride, _, _) = picture.strides();
    let luma: Vec<u8> = (0..h)
        .flat_map(|row| &picture.y()[row * stride..row * stride + w])
        .copied()
        .collect();
    Ok(psnr(source.y(), &luma))
}

/// Encode `frames` screens (a keyframe every 60, as joins/PLIs would ask), timing only the
/// encoder: the conversion is measured on its own.
fn encode_cost(
    codec: Codec,
    screens: &[Vec<u8>],
    frames: usize,
) -> Result<EncodeCost, Box<dyn std::error::Error>> {
    let settings = EncoderSettings {
        width: WIDTH,
        height: HEIGHT,
        bitrate: 4_000_000,
        max_fps: 60.0,
    };
    let mut encoder = new_encoder(codec, settings)?;
    let mut i420 = I420Frame::new(WIDTH, HEIGHT)?;
    let mut decoder = (codec == Codec::H264)
        .then(openh264::decoder::Decoder::new)
        .transpose()?;
    let mut psnr_sum = 0.0;
    let (mut delta_time, mut key_time, mut cpu_time, mut bytes, mut keys) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        0usize,
        0usize,
    );
    for n in 0..frames {
        i420.fill_from(&screens[n % screens.len()], WIDTH * 4, PixelLayout::Bgrx)?;
        if n % 60 == 0 {
            encoder.request_keyframe();
        }
        let (t, cpu) = (Instant::now(), thread_cpu_time());
        let out = encoder.encode(&i420)?;
        let took = t.elapsed();
        cpu_time += thread_cpu_time() - cpu;
        bytes += out.data.len();
        if let Some(decoder) = decoder.as_mut() {
            psnr_sum += h264_psnr(decoder, &out.data, &i420)?;
        }
        if out.keyframe {
            keys += 1;
            key_time += took;
        } else {
            delta_time += took;
        }
    }
    Ok(EncodeCost {
        all_ms: ms(delta_time + key_time, frames),
        cpu_ms: ms(cpu_time, frames),
        delta_ms: ms(delta_time, frames - keys),
        key_ms: ms(key_time, keys.max(1)),
        keys,
        kbit_per_frame: bytes as f64 * 8.0 / 1000.0 / frames as f64,
        psnr_db: decoder.map(|_| psnr_sum / frames as f64),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let frames: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|_| format!("FRAMES must be a positive number, got {a:?}"))?,
        None => 240,
    };
    let frames = frames.max(10);
    let screens: Vec<Vec<u8>> = (0..30).map(|i| screen(i * 8)).collect();
    let mut i420 = I420Frame::new(WIDTH, HEIGHT)?;

    let (start, cpu) = (Instant::now(), thread_cpu_time());
    for n in 0..frames {
        i420.fill_from(&screens[n % screens.len()], WIDTH * 4, PixelLayout::Bgrx)?;
    }
    let convert_ms = ms(start.elapsed(), frames);
    let convert_cpu_ms = ms(thread_cpu_time() - cpu, frames);
    println!("frames: {frames} at {WIDTH}x{HEIGHT} (scrolling phone screen), 1 thread");
    println!("(ms are wall time; cpu ms count only this thread's CPU time, stable under load)");
    println!("bgrx-to-i420-ms: {convert_ms:.3} (cpu {convert_cpu_ms:.3})");

    let vp8 = encode_cost(Codec::Vp8, &screens, frames)?;
    let h264 = encode_cost(Codec::H264, &screens, frames)?;
    for (name, cost) in [("vp8", &vp8), ("h264", &h264)] {
        println!(
            "{name}-encode-ms: {:.3} (cpu {:.3}; delta {:.3}, keyframe {:.3}, {} keyframes)",
            cost.all_ms, cost.cpu_ms, cost.delta_ms, cost.key_ms, cost.keys
        );
        println!("{name}-kbit-per-frame: {:.1}", cost.kbit_per_frame);
        if let Some(db) = cost.psnr_db {
            println!("{name}-luma-psnr-db: {db:.1}");
        }
    }
    for (name, cost) in [("vp8-", &vp8), ("", &h264)] {
        println!(
            "{name}frames-per-second-per-core: {:.1} (convert + encode; by cpu time {:.1})",
            1000.0 / (cost.all_ms + convert_ms),
            1000.0 / (cost.cpu_ms + convert_cpu_ms)
        );
    }
    println!(
        "ratio: encode-720p-ms {:.3} (target <= 1)",
        h264.all_ms / 5.0
    );
    Ok(())
}
