//! The byte stream of the relay's `GET /phones/{id}/frames` (all integers little-endian):
//!
//! ```text
//! preamble: "CPF1" | format u32 (virtio_gpu_formats code) | width u32 | height u32
//! record:   seq u64 | x u32 | y u32 | width u32 | height u32 | width*height*4 bytes of pixels
//! ```
//!
//! The first record after the preamble covers the whole screen; each later one is a damaged
//! rectangle's rows, tightly packed, or an empty keep-alive record ([`keepalive`]). [`Decoder`] checks everything against caps and the
//! announced geometry before it allocates or copies, so a broken or hostile relay gets an
//! error, never a panic or an allocation it chose.

use std::path::PathBuf;

use cloudphone_display::{FramebufferInfo, PixelFormat};
use cloudphone_vmm_api::DamageEvent;

/// First bytes of a frames stream (protocol version 1).
pub const MAGIC: [u8; 4] = *b"CPF1";
/// Bytes of the preamble.
pub const PREAMBLE_LEN: usize = 16;
/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 24;
/// Longest screen side accepted.
pub const MAX_SIDE: u32 = 8192;
/// Most pixels a screen may have (64 MiB of BGRX): bounds every allocation of the mirror.
pub const MAX_PIXELS: u64 = 4096 * 4096;
/// A frames stream silent this long is dead (the relay sends a keep-alive every 10 s).
pub const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Bytes per pixel on the wire (every supported format is 32-bit).
const BPP: u64 = PixelFormat::BYTES_PER_PIXEL as u64;

/// Why a frames stream is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The stream does not start with [`MAGIC`].
    #[error("not a cloudphone frames stream (bad magic {0:02x?}); is the relay URL right?")]
    BadMagic([u8; 4]),
    /// The announced screen is empty, too large or in an unknown format.
    #[error("unusable screen geometry: {0}")]
    Geometry(String),
    /// A record names pixels outside the screen, or comes before the preamble.
    #[error("bad frame record: {0}")]
    Record(String),
}

/// A screen's size and pixel format, as carried by the preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Pixel layout (always 4 bytes per pixel).
    pub format: PixelFormat,
}

impl Geometry {
    /// Checked geometry: non-empty, at most [`MAX_SIDE`] per side and [`MAX_PIXELS`] in all.
    pub fn new(width: u32, height: u32, format: PixelFormat) -> Result<Self, WireError> {
        if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
            return Err(WireError::Geometry(format!(
                "{width}x{height} (each side must be 1..={MAX_SIDE})"
            )));
        }
        if u64::from(width) * u64::from(height) > MAX_PIXELS {
            return Err(WireError::Geometry(format!(
                "{width}x{height} is over {MAX_PIXELS} pixels"
            )));
        }
        Ok(Self {
            width,
            height,
            format,
        })
    }

    /// The geometry of a VMM's framebuffer description (its stride must fit a row).
    pub fn of(info: &FramebufferInfo) -> Result<Self, WireError> {
        if u64::from(info.stride) < u64::from(info.width) * BPP {
            return Err(WireError::Geometry(format!(
                "stride {} is shorter than a {}-pixel row",
                info.stride, info.width
            )));
        }
        Self::new(info.width, info.height, info.format)
    }

    /// Bytes of a tightly packed frame.
    pub fn frame_len(self) -> usize {
        (u64::from(self.width) * u64::from(self.height) * BPP) as usize
    }

    /// Whether `rect` lies inside the screen.
    pub fn contains(self, rect: &DamageEvent) -> bool {
        u64::from(rect.x) + u64::from(rect.width) <= u64::from(self.width)
            && u64::from(rect.y) + u64::from(rect.height) <= u64::from(self.height)
    }

    /// The whole screen as a damage rectangle.
    pub fn full(self, seq: u64) -> DamageEvent {
        DamageEvent {
            seq,
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }

    /// A framebuffer description of a tightly packed copy (no file behind it).
    pub fn info(self, seq: u64) -> FramebufferInfo {
        FramebufferInfo {
            path: PathBuf::new(),
            width: self.width,
            height: self.height,
            stride: self.width * PixelFormat::BYTES_PER_PIXEL,
            format: self.format,
            seq,
        }
    }
}

/// The preamble announcing `geometry`.
pub fn preamble(geometry: Geometry) -> [u8; PREAMBLE_LEN] {
    let mut out = [0u8; PREAMBLE_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4..8].copy_from_slice(&geometry.format.virtio_code().to_le_bytes());
    out[8..12].copy_from_slice(&geometry.width.to_le_bytes());
    out[12..16].copy_from_slice(&geometry.height.to_le_bytes());
    out
}

/// A record header for `rect`; its `width * height * 4` pixel bytes must follow.
pub fn record_header(rect: &DamageEvent) -> [u8; RECORD_HEADER_LEN] {
    let mut out = [0u8; RECORD_HEADER_LEN];
    out[..8].copy_from_slice(&rect.seq.to_le_bytes());
    for (i, v) in [rect.x, rect.y, rect.width, rect.height].iter().enumerate() {
        out[8 + i * 4..12 + i * 4].copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The empty record a relay sends on an idle stream (no pixels, nothing changed).
pub fn keepalive() -> DamageEvent {
    DamageEvent {
        seq: 0,
        x: 0,
        y: 0,
        width: 0,
        height: 0,
    }
}

/// The client's copy of a relayed screen, kept current by [`Decoder`].
#[derive(Debug, Default)]
pub struct Mirror {
    /// From the last preamble; `None` until one arrived.
    pub geometry: Option<Geometry>,
    /// Sequence number of the last applied record.
    pub seq: u64,
    /// Tightly packed rows (`geometry.frame_len()` bytes).
    pub pixels: Vec<u8>,
}

/// Incremental parser of a frames stream: feed it the bytes as they come, apply what is
/// complete to a [`Mirror`].
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    started: bool,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received but not yet applied (non-zero at the end of a stream: it was cut short).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Append received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Apply the next complete record to `mirror` and return its rectangle; `Ok(None)` when more
    /// bytes are needed. A preamble resets `mirror` to the announced geometry (black).
    pub fn apply_next(&mut self, mirror: &mut Mirror) -> Result<Option<DamageEvent>, WireError> {
        if !self.started {
            if self.buf.len() < PREAMBLE_LEN {
                return Ok(None);
            }
            let b = &self.buf;
            let magic = [b[0], b[1], b[2], b[3]];
            if magic != MAGIC {
                return Err(WireError::BadMagic(magic));
            }
            let code = u32_at(b, 4);
            let format = PixelFormat::from_virtio(code)
                .ok_or_else(|| WireError::Geometry(format!("unknown pixel format code {code}")))?;
            let geometry = Geometry::new(u32_at(b, 8), u32_at(b, 12), format)?;
            self.buf.drain(..PREAMBLE_LEN);
            self.started = true;
            if mirror.geometry != Some(geometry) {
                mirror.pixels = vec![0; geometry.frame_len()];
                mirror.geometry = Some(geometry);
            }
        }
        if self.buf.len() < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let b = &self.buf;
        let rect = DamageEvent {
            seq: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
            x: u32_at(b, 8),
            y: u32_at(b, 12),
            width: u32_at(b, 16),
            height: u32_at(b, 20),
        };
        let geometry = mirror
            .geometry
            .ok_or_else(|| WireError::Record("mirror lost its geometry".into()))?;
        if !geometry.contains(&rect) {
            return Err(WireError::Record(format!(
                "rect {}x{} at ({}, {}) is outside the {}x{} screen",
                rect.width, rect.height, rect.x, rect.y, geometry.width, geometry.height
            )));
        }
        let row = rect.width as usize * BPP as usize;
        let len = row * rect.height as usize;
        if self.buf.len() < RECORD_HEADER_LEN + len {
            return Ok(None);
        }
        let stride = geometry.width as usize * BPP as usize;
        let payload = &self.buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        if row > 0 {
            for (r, src) in payload.chunks_exact(row).enumerate() {
                let at = (rect.y as usize + r) * stride + rect.x as usize * BPP as usize;
                mirror.pixels[at..at + row].copy_from_slice(src);
            }
        }
        if len > 0 {
            mirror.seq = rect.seq;
        }
        self.buf.drain(..RECORD_HEADER_LEN + len);
        Ok(Some(rect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn geometry(w: u32, h: u32) -> Geometry {
        Geometry::new(w, h, PixelFormat::B8G8R8X8).unwrap()
    }

    fn record(rect: DamageEvent, fill: u8) -> Vec<u8> {
        let mut out = record_header(&rect).to_vec();
        out.resize(out.len() + (rect.width * rect.height * 4) as usize, fill);
        out
    }

    fn rect(seq: u64, x: u32, y: u32, width: u32, height: u32) -> DamageEvent {
        DamageEvent {
            seq,
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn applies_a_full_frame_then_a_rect_fed_a_byte_at_a_time() {
        let g = geometry(4, 3);
        let mut stream = preamble(g).to_vec();
        stream.extend(record(g.full(5), 1));
        stream.extend(record(rect(6, 1, 1, 2, 2), 9));
        let (mut dec, mut mirror) = (Decoder::new(), Mirror::default());
        let mut applied = Vec::new();
        for b in &stream {
            dec.feed(std::slice::from_ref(b));
            while let Some(r) = dec.apply_next(&mut mirror).unwrap() {
                applied.push(r);
            }
        }
        assert_eq!(applied, vec![g.full(5), rect(6, 1, 1, 2, 2)]);
        assert_eq!((mirror.geometry, mirror.seq), (Some(g), 6));
        let px = |x: usize, y: usize| mirror.pixels[(y * 4 + x) * 4];
        assert_eq!(
            (px(0, 0), px(1, 1), px(2, 2), px(3, 2), px(0, 1)),
            (1, 9, 9, 1, 1)
        );
    }

    #[test]
    fn refuses_hostile_streams_before_allocating() {
        let g = geometry(4, 3);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"HTTP/1.1 200 OK\r\n".to_vec(), "magic"),
            (
                [&MAGIC[..], &[99, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0]].concat(),
                "format",
            ),
            (preamble(Geometry { width: 0, ..g }).to_vec(), "1..="),
            (
                preamble(Geometry {
                    width: u32::MAX,
                    height: u32::MAX,
                    ..g
                })
                .to_vec(),
                "1..=",
            ),
            (
                preamble(Geometry {
                    width: 8192,
                    height: 8192,
                    ..g
                })
                .to_vec(),
                "pixels",
            ),
            (
                [&preamble(g)[..], &record_header(&rect(1, 3, 0, 2, 1))].concat(),
                "outside",
            ),
            (
                [
                    &preamble(g)[..],
                    &record_header(&rect(1, 0, 0, u32::MAX, u32::MAX)),
                ]
                .concat(),
                "outside",
            ),
            (
                [
                    &preamble(g)[..],
                    &record_header(&rect(1, u32::MAX, 2, 2, 1)),
                ]
                .concat(),
                "outside",
            ),
        ];
        for (stream, why) in cases {
            let (mut dec, mut mirror) = (Decoder::new(), Mirror::default());
            dec.feed(&stream);
            let err = dec.apply_next(&mut mirror).unwrap_err();
            assert!(err.to_string().contains(why), "{err} should mention {why}");
            assert!(mirror.pixels.len() <= g.frame_len());
        }
    }

    #[test]
    fn a_truncated_record_waits_for_more_and_changes_nothing() {
        let g = geometry(2, 2);
        let mut stream = preamble(g).to_vec();
        let full = record(g.full(1), 7);
        stream.extend(&full[..full.len() - 1]);
        let (mut dec, mut mirror) = (Decoder::new(), Mirror::default());
        dec.feed(&stream);
        assert_eq!(dec.apply_next(&mut mirror).unwrap(), None);
        assert_eq!(dec.pending(), full.len() - 1);
        assert!(mirror.pixels.iter().all(|&b| b == 0));
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        let g = geometry(16, 8);
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            (proptest::collection::vec(any::<u8>(), 0..400))
                .prop_map(move |tail| { [&preamble(g)[..], &tail].concat() }),
            (
                any::<[u32; 4]>(),
                proptest::collection::vec(any::<u8>(), 0..600)
            )
                .prop_map(move |([x, y, w, h], tail)| {
                    let r = rect(1, x % 20, y % 10, w % 20, h % 10);
                    [&preamble(g)[..], &record_header(&r), &tail].concat()
                }),
        ]
    }

    proptest! {
        #[test]
        fn fuzz_decoder_never_panics_or_grows_past_the_screen(
            stream in arb_stream(),
            cuts in proptest::collection::vec(1usize..64, 1..8),
        ) {
            static CASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_multiple_of(256) {
                eprintln!("fuzz relay_decoder: {n} cases");
            }
            let (mut dec, mut mirror) = (Decoder::new(), Mirror::default());
            let mut rest = &stream[..];
            'feed: for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
                rest = tail;
                dec.feed(chunk);
                loop {
                    match dec.apply_next(&mut mirror) {
                        Ok(Some(r)) => prop_assert!(mirror.geometry.unwrap().contains(&r)),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
            }
            prop_assert!(mirror.pixels.len() <= (MAX_PIXELS * 4) as usize);
            if let Some(g) = mirror.geometry {
                prop_assert_eq!(mirror.pixels.len(), g.frame_len());
            }
        }
    }
}
