//! The test phone's screen from the host side: goldens drawn by the phone agent's own code
//! (`phone-agent render`), its tap targets (`phone-agent layout`) and PNG decoding, so tests
//! can tell which page a screenshot or a video frame shows.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::VmProcess;

/// Rows `0..STATUS_BAR` of the phone's screen hold the real time: never compared.
pub const STATUS_BAR: u32 = 48;

/// An RGBA image.
pub struct Rgba {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Row-major RGBA bytes.
    pub pixels: Vec<u8>,
}

/// Decode an RGB or RGBA PNG (screenshots and goldens) into RGBA.
pub fn decode_png(bytes: &[u8]) -> Rgba {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("PNG frame");
    pixels.truncate(info.buffer_size());
    let pixels = match info.color_type {
        png::ColorType::Rgba => pixels,
        png::ColorType::Rgb => pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    Rgba {
        width: info.width,
        height: info.height,
        pixels,
    }
}

/// The host build of the static guest agent (`scripts/build-test-image` builds it).
pub fn phone_agent() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe.ancestors().nth(3).expect("target dir").to_path_buf();
    let agent = target.join("x86_64-unknown-linux-gnu/release/phone-agent");
    assert!(
        agent.exists(),
        "{} missing: run scripts/build-test-image",
        agent.display()
    );
    agent
}

/// The agent's drawing of `screen` at `size` (clock at 12:00, `info` as `--info k=v`), saved
/// in `dir` and decoded.
pub fn golden(dir: &Path, screen: &str, size: (u32, u32), info: &[&str]) -> Rgba {
    let out = dir.join(format!(
        "golden-{screen}-{}x{}-{}.png",
        size.0,
        size.1,
        info.join("_").replace(['=', '/'], "-")
    ));
    let status = Command::new(phone_agent())
        .args(["render", "--screen", screen, "--time", "12:00"])
        .args([
            "--width",
            &size.0.to_string(),
            "--height",
            &size.1.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .args(info.iter().flat_map(|e| ["--info", e]))
        .status()
        .expect("run phone-agent render");
    assert!(status.success(), "phone-agent render {screen} failed");
    decode_png(&std::fs::read(&out).expect("golden PNG"))
}

/// Centre of a named home-screen icon in screen pixels, from `phone-agent layout`.
pub fn icon_centre(name: &str, size: (u32, u32)) -> (u32, u32) {
    let out = Command::new(phone_agent())
        .args([
            "layout",
            "--width",
            &size.0.to_string(),
            "--height",
            &size.1.to_string(),
        ])
        .output()
        .expect("phone-agent layout");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("icon name={name} ")))
        .unwrap_or_else(|| panic!("no icon {name} in layout:\n{text}"));
    let field = |k: &str| -> u32 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("layout line without {k}: {line}"))
    };
    (field("x") + field("w") / 2, field("y") + field("h") / 2)
}

/// Mean luminance of `cell`×`cell` blocks, row-major: a lossy video frame and a golden of the
/// same page agree on this within a few levels, different pages do not.
pub fn luma_grid(img: &Rgba, cell: u32) -> Vec<f64> {
    let (cols, rows) = (img.width / cell, img.height / cell);
    let mut grid = Vec::with_capacity((cols * rows) as usize);
    for r in 0..rows {
        for c in 0..cols {
            let mut sum = 0.0;
            for y in r * cell..(r + 1) * cell {
                for x in c * cell..(c + 1) * cell {
                    let p = &img.pixels[((y * img.width + x) * 4) as usize..][..3];
                    sum +=
                        0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]);
                }
            }
            grid.push(sum / f64::from(cell * cell));
        }
    }
    grid
}

/// Mean absolute difference of two luminance grids, skipping the first `skip_rows` rows of
/// cells (the status bar's clock).
pub fn grid_distance(a: &[f64], b: &[f64], cols: usize, skip_rows: usize) -> f64 {
    let start = (cols * skip_rows).min(a.len());
    let n = a.len().min(b.len()).saturating_sub(start).max(1);
    a[start..]
        .iter()
        .zip(&b[start..])
        .map(|(x, y)| (x - y).abs())
        .sum::<f64>()
        / n as f64
}

/// Fraction of pixels below the status bar (rows `0..STATUS_BAR` show the real time) that
/// differ, any channel off by more than 8.
pub fn difference(a: &Rgba, b: &Rgba) -> f64 {
    assert_eq!(
        (a.width, a.height),
        (b.width, b.height),
        "screen sizes differ"
    );
    let start = (STATUS_BAR * a.width * 4) as usize;
    let differing = a.pixels[start..]
        .chunks_exact(4)
        .zip(b.pixels[start..].chunks_exact(4))
        .filter(|(p, q)| p[..3].iter().zip(&q[..3]).any(|(x, y)| x.abs_diff(*y) > 8))
        .count();
    differing as f64 / ((a.height - STATUS_BAR) * a.width) as f64
}

/// The guest's screen, read from the exported framebuffer (shared memory) the API points at.
pub fn screenshot(vm: &VmProcess) -> Rgba {
    screenshot_at(&vm.api_socket)
}

/// [`screenshot`] of a VMM this test did not start (a host agent's phone), by its API socket.
pub fn screenshot_at(api_socket: &Path) -> Rgba {
    let (status, body) = crate::api_request(api_socket, "GET", "/framebuffer", None).unwrap();
    assert_eq!(status, 200, "GET /framebuffer: {body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    let path = info["path"].as_str().unwrap();
    let stride = info["stride"].as_u64().unwrap() as usize;
    let (w, h) = (
        info["width"].as_u64().unwrap() as u32,
        info["height"].as_u64().unwrap() as u32,
    );
    assert_eq!(info["format"], "B8G8R8X8", "phone agent uses XRGB8888");
    let raw = std::fs::read(path).unwrap();
    let mut pixels = Vec::with_capacity((w * h * 4) as usize);
    for row in 0..h as usize {
        for px in raw[row * stride..row * stride + w as usize * 4].chunks_exact(4) {
            pixels.extend_from_slice(&[px[2], px[1], px[0], 255]);
        }
    }
    Rgba {
        width: w,
        height: h,
        pixels,
    }
}

/// Put touch contacts `(id, x, y, down)` through the VMM API, as the browser does.
pub fn touch(vm: &VmProcess, fingers: &[(u32, u32, u32, bool)]) {
    touch_at(&vm.api_socket, fingers)
}

/// [`touch`] on a VMM this test did not start, by its API socket.
pub fn touch_at(api_socket: &Path, fingers: &[(u32, u32, u32, bool)]) {
    let list: Vec<String> = fingers
        .iter()
        .map(|(id, x, y, down)| format!(r#"{{"id":{id},"x":{x},"y":{y},"down":{down}}}"#))
        .collect();
    let body = format!(r#"{{"touch":[{}]}}"#, list.join(","));
    let (status, reply) = crate::api_request(api_socket, "PUT", "/input", Some(&body)).unwrap();
    assert!(status < 300, "PUT /input {body}: {status} {reply}");
}
