//! Streaming cost per frame at phone resolution (720×1280): BGRX→I420 conversion and H.264
//! encoding of a scrolling phone-like screen, single-threaded (one encoder per phone).
//!
//! `cargo run --release -p cloudphone-stream --example stream_bench -- [FRAMES]`; the last line
//! is `ratio: encode-720p-ms <ms/5> (target <= 1)` (5 ms per frame budget).

use std::time::{Duration, Instant};

use cloudphone_stream::{H264Encoder, H264Settings, I420Frame, PixelLayout};

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
            } else if (x / 120 + sy / 160) % 2 == 0 && x % 120 > 20 && sy % 160 > 30 {
                ((x * 3 % 256) as u8, 120, (sy % 256) as u8)
            } else if sy % 24 < 2 || (sy % 24 < 14 && (x / 7 + sy / 24) % 5 != 0 && x % 7 < 5) {
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

    let start = Instant::now();
    for n in 0..frames {
        i420.fill_from(&screens[n % screens.len()], WIDTH * 4, PixelLayout::Bgrx)?;
    }
    let convert_ms = ms(start.elapsed(), frames);

    let settings = H264Settings {
        width: WIDTH,
        height: HEIGHT,
        bitrate: 4_000_000,
        max_fps: 60.0,
    };
    let mut encoder = H264Encoder::new(settings)?;
    let (mut encode_time, mut key_time, mut bytes, mut keys) =
        (Duration::ZERO, Duration::ZERO, 0usize, 0usize);
    for n in 0..frames {
        i420.fill_from(&screens[n % screens.len()], WIDTH * 4, PixelLayout::Bgrx)?;
        if n % 60 == 0 {
            encoder.request_keyframe();
        }
        let t = Instant::now();
        let out = encoder.encode(&i420)?;
        let took = t.elapsed();
        bytes += out.data.len();
        if out.keyframe {
            keys += 1;
            key_time += took;
        } else {
            encode_time += took;
        }
    }
    let delta_ms = ms(encode_time, frames - keys);
    let all_ms = ms(encode_time + key_time, frames);
    let per_core_fps = 1000.0 / (all_ms + convert_ms);
    println!("frames: {frames} at {WIDTH}x{HEIGHT} (scrolling phone screen), 1 thread");
    println!("bgrx-to-i420-ms: {convert_ms:.3}");
    println!(
        "h264-encode-ms: {all_ms:.3} (delta {delta_ms:.3}, keyframe {:.3}, {keys} keyframes)",
        ms(key_time, keys.max(1))
    );
    println!(
        "h264-kbit-per-frame: {:.1}",
        bytes as f64 * 8.0 / 1000.0 / frames as f64
    );
    println!("frames-per-second-per-core: {per_core_fps:.1} (convert + encode)");
    println!("ratio: encode-720p-ms {:.3} (target <= 1)", all_ms / 5.0);
    Ok(())
}
