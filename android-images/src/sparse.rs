//! Android sparse images (libsparse's format, what `img2simg`/`simg2img` read and write):
//! a 28-byte file header, then chunks of raw data, a repeated 4-byte fill value, a
//! "don't care" gap, or a CRC32 of everything expanded so far. Both directions stream through
//! fixed-size buffers; no allocation follows a size field.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::error::{invalid, stream_err, ImageError, Result};

/// `sparse_header.magic`.
pub const SPARSE_MAGIC: u32 = 0xed26_ff3a;
/// Size of the file header this crate writes (and the minimum it reads).
pub const FILE_HEADER_LEN: u16 = 28;
/// Size of the chunk header this crate writes (and the minimum it reads).
pub const CHUNK_HEADER_LEN: u16 = 12;
/// Chunk type: raw data follows.
pub const CHUNK_RAW: u16 = 0xcac1;
/// Chunk type: a 4-byte value repeated over the chunk.
pub const CHUNK_FILL: u16 = 0xcac2;
/// Chunk type: a gap whose contents are unspecified (expanded as zeros).
pub const CHUNK_DONT_CARE: u16 = 0xcac3;
/// Chunk type: CRC32 of the expanded data so far.
pub const CHUNK_CRC32: u16 = 0xcac4;
/// Largest block size accepted: bounds the scratch buffer used per block.
const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Copy buffer size.
const BUF_LEN: usize = 64 << 10;
/// Longest raw chunk written, in bytes (keeps `total_sz` far below u32::MAX).
const MAX_RAW_CHUNK: u64 = 64 << 20;

/// The sparse file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Block size in bytes (a multiple of 4).
    pub block_size: u32,
    /// Blocks in the expanded image.
    pub total_blocks: u32,
    /// Chunks in the file.
    pub total_chunks: u32,
    /// CRC32 of the expanded image, or 0 when not recorded.
    pub image_checksum: u32,
}

impl SparseHeader {
    /// Size of the expanded image in bytes.
    pub fn expanded_len(&self) -> u64 {
        u64::from(self.block_size) * u64::from(self.total_blocks)
    }
}

/// How a chunk expands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// Literal data.
    Raw,
    /// A repeated little-endian 32-bit value.
    Fill(u32),
    /// Unspecified contents.
    DontCare,
    /// A CRC32 check of everything before it.
    Crc32(u32),
}

/// One chunk as read (for `inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// Chunk type and payload.
    pub kind: ChunkKind,
    /// First expanded block.
    pub start_block: u64,
    /// Blocks covered.
    pub blocks: u32,
}

/// Choices when writing a sparse image.
#[derive(Debug, Clone, Copy)]
pub struct SparseOptions {
    /// Block size (multiple of 4; libsparse uses 4096).
    pub block_size: u32,
    /// Write all-zero blocks as "don't care" (smaller; flashing leaves old data there) instead
    /// of zero fills.
    pub zeros_as_dont_care: bool,
    /// End with a CRC32 chunk over the whole image.
    pub crc: bool,
}

impl Default for SparseOptions {
    fn default() -> Self {
        Self {
            block_size: 4096,
            zeros_as_dont_care: false,
            crc: false,
        }
    }
}

/// Block sizes libsparse accepts (multiples of 4), capped so a block fits a small buffer.
fn check_block_size(bs: u32) -> Result<()> {
    if bs == 0 || bs & 3 != 0 || bs > MAX_BLOCK_SIZE {
        return Err(invalid(
            "sparse.blk_sz",
            bs,
            "must be a non-zero multiple of 4 up to 1 MiB",
        ));
    }
    Ok(())
}

/// True when `buf` starts with the sparse magic.
pub fn is_sparse(buf: &[u8]) -> bool {
    buf.len() >= 4 && u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) == SPARSE_MAGIC
}

fn read_exact(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            invalid(what, "end of input", "sparse image truncated")
        } else {
            ImageError::Stream {
                what: what.to_string(),
                source: e,
            }
        }
    })
}

/// Discards `len` bytes of input (extra header bytes from newer writers).
fn skip(r: &mut impl Read, len: u64, what: &str) -> Result<()> {
    let copied = std::io::copy(&mut r.take(len), &mut std::io::sink()).map_err(stream_err(what))?;
    if copied != len {
        return Err(invalid(what, "end of input", "sparse image truncated"));
    }
    Ok(())
}

/// Reads and validates the file header, leaving `r` at the first chunk; returns the header and
/// the chunk header length to use.
pub fn read_header(r: &mut impl Read) -> Result<(SparseHeader, u16)> {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    read_exact(r, &mut h, "sparse header")?;
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if u32_at(0) != SPARSE_MAGIC {
        return Err(ImageError::BadMagic {
            what: "sparse image",
            found: format!("{:#010x}", u32_at(0)),
            expected: format!("{SPARSE_MAGIC:#010x}"),
        });
    }
    if u16_at(4) != 1 {
        return Err(invalid(
            "sparse.major_version",
            u16_at(4),
            "only version 1 exists",
        ));
    }
    let file_hdr = u16_at(8);
    let chunk_hdr = u16_at(10);
    if file_hdr < FILE_HEADER_LEN {
        return Err(invalid(
            "sparse.file_hdr_sz",
            file_hdr,
            "must be at least 28",
        ));
    }
    if chunk_hdr < CHUNK_HEADER_LEN {
        return Err(invalid(
            "sparse.chunk_hdr_sz",
            chunk_hdr,
            "must be at least 12",
        ));
    }
    let header = SparseHeader {
        block_size: u32_at(12),
        total_blocks: u32_at(16),
        total_chunks: u32_at(20),
        image_checksum: u32_at(24),
    };
    check_block_size(header.block_size)?;
    skip(r, u64::from(file_hdr - FILE_HEADER_LEN), "sparse header")?;
    Ok((header, chunk_hdr))
}

/// Tracks the expanded output: position, running CRC, and the cap on its size.
struct Expander<'w, W> {
    out: &'w mut W,
    crc: crc32fast::Hasher,
    written: u64,
    pending_skip: u64,
}

impl<W: Write + Seek> Expander<'_, W> {
    fn emit(&mut self, data: &[u8]) -> Result<()> {
        if self.pending_skip > 0 {
            self.out
                .seek(SeekFrom::Current(self.pending_skip as i64))
                .map_err(stream_err("sparse output"))?;
            self.pending_skip = 0;
        }
        self.out
            .write_all(data)
            .map_err(stream_err("sparse output"))?;
        self.crc.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    fn gap(&mut self, len: u64) {
        let zeros = [0u8; BUF_LEN];
        let mut left = len;
        while left > 0 {
            let n = left.min(BUF_LEN as u64) as usize;
            self.crc.update(&zeros[..n]);
            left -= n as u64;
        }
        self.pending_skip += len;
        self.written += len;
    }

    fn finish(&mut self) -> Result<()> {
        if self.pending_skip > 0 {
            // Extend the output to its full length by writing the final (zero) byte.
            self.out
                .seek(SeekFrom::Current(self.pending_skip as i64 - 1))
                .map_err(stream_err("sparse output"))?;
            self.out
                .write_all(&[0])
                .map_err(stream_err("sparse output"))?;
            self.pending_skip = 0;
        }
        self.out.flush().map_err(stream_err("sparse output"))
    }
}

/// Expands a sparse image from `input` into `out` (positioned at the start of a fresh, empty
/// output; gaps are seeked over). Refuses images that expand beyond `max_len` bytes. Checks
/// every chunk size against the header, the block total, the chunk count and CRCs.
pub fn unsparse<R: Read, W: Write + Seek>(
    input: &mut R,
    out: &mut W,
    max_len: u64,
) -> Result<(SparseHeader, Vec<ChunkInfo>)> {
    let (header, chunk_hdr) = read_header(input)?;
    if header.expanded_len() > max_len {
        return Err(invalid(
            "sparse.total_blks",
            header.total_blocks,
            format!(
                "expands to {} bytes, over the {max_len}-byte limit",
                header.expanded_len()
            ),
        ));
    }
    let bs = u64::from(header.block_size);
    let mut exp = Expander {
        out,
        crc: crc32fast::Hasher::new(),
        written: 0,
        pending_skip: 0,
    };
    let mut chunks = Vec::new();
    let mut block = 0u64;
    let mut buf = vec![0u8; BUF_LEN];
    for index in 0..header.total_chunks {
        let field = |f: &str| format!("sparse.chunk[{index}].{f}");
        let mut ch = [0u8; CHUNK_HEADER_LEN as usize];
        read_exact(input, &mut ch, &field("header"))?;
        skip(
            input,
            u64::from(chunk_hdr - CHUNK_HEADER_LEN),
            &field("header"),
        )?;
        let kind_raw = u16::from_le_bytes([ch[0], ch[1]]);
        let blocks = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        let total = u64::from(u32::from_le_bytes([ch[8], ch[9], ch[10], ch[11]]));
        let data_len = u64::from(blocks) * bs;
        let (payload, expected_total) = match kind_raw {
            CHUNK_RAW => (data_len, data_len),
            CHUNK_FILL | CHUNK_CRC32 => (4, 4),
            CHUNK_DONT_CARE => (0, 0),
            other => {
                return Err(invalid(
                    field("chunk_type"),
                    format!("{other:#06x}"),
                    "expected 0xcac1..=0xcac4",
                ))
            }
        };
        let expected_total = expected_total + u64::from(chunk_hdr);
        if total != expected_total {
            return Err(invalid(
                field("total_sz"),
                total,
                format!("a chunk of this type and {blocks} blocks needs {expected_total}"),
            ));
        }
        if kind_raw != CHUNK_CRC32 && block + u64::from(blocks) > u64::from(header.total_blocks) {
            return Err(invalid(
                field("chunk_sz"),
                blocks,
                format!("runs past total_blks {}", header.total_blocks),
            ));
        }
        let kind = match kind_raw {
            CHUNK_RAW => {
                let mut left = payload;
                while left > 0 {
                    let n = left.min(BUF_LEN as u64) as usize;
                    read_exact(input, &mut buf[..n], &field("data"))?;
                    exp.emit(&buf[..n])?;
                    left -= n as u64;
                }
                ChunkKind::Raw
            }
            CHUNK_FILL => {
                let mut v = [0u8; 4];
                read_exact(input, &mut v, &field("fill"))?;
                for word in buf.chunks_exact_mut(4) {
                    word.copy_from_slice(&v);
                }
                let mut left = data_len;
                while left > 0 {
                    let n = left.min(BUF_LEN as u64) as usize;
                    exp.emit(&buf[..n])?;
                    left -= n as u64;
                }
                ChunkKind::Fill(u32::from_le_bytes(v))
            }
            CHUNK_DONT_CARE => {
                exp.gap(data_len);
                ChunkKind::DontCare
            }
            _ => {
                let mut v = [0u8; 4];
                read_exact(input, &mut v, &field("crc32"))?;
                let stored = u32::from_le_bytes(v);
                let computed = exp.crc.clone().finalize();
                if stored != computed {
                    return Err(ImageError::Checksum {
                        what: field("crc32"),
                        stored,
                        computed,
                    });
                }
                ChunkKind::Crc32(stored)
            }
        };
        chunks.push(ChunkInfo {
            kind,
            start_block: block,
            blocks,
        });
        block += u64::from(blocks) * u64::from(kind_raw != CHUNK_CRC32);
    }
    if block != u64::from(header.total_blocks) {
        return Err(invalid(
            "sparse.total_blks",
            header.total_blocks,
            format!("chunks cover {block} blocks"),
        ));
    }
    let computed = exp.crc.clone().finalize();
    if header.image_checksum != 0 && header.image_checksum != computed {
        return Err(ImageError::Checksum {
            what: "sparse.image_checksum".into(),
            stored: header.image_checksum,
            computed,
        });
    }
    exp.finish()?;
    Ok((header, chunks))
}

/// Classification of one block of the raw input.
fn classify(block: &[u8]) -> ChunkKind {
    let first = [block[0], block[1], block[2], block[3]];
    if block.chunks_exact(4).all(|w| w == first) {
        ChunkKind::Fill(u32::from_le_bytes(first))
    } else {
        ChunkKind::Raw
    }
}

/// Writes the raw image read from `input` (`len` bytes) as a sparse image to `out`. The last
/// partial block, if any, is zero-padded (the expanded image is a whole number of blocks,
/// as with libsparse). Two passes: classify blocks, then write.
pub fn sparsify<R: Read + Seek, W: Write>(
    input: &mut R,
    len: u64,
    out: &mut W,
    opts: &SparseOptions,
) -> Result<SparseHeader> {
    let bs = opts.block_size;
    check_block_size(bs)?;
    let bsz = u64::from(bs);
    let total_blocks = u32::try_from(len.div_ceil(bsz)).map_err(|_| {
        invalid(
            "sparse.total_blks",
            len.div_ceil(bsz),
            "more than 2^32 blocks; use a larger block size",
        )
    })?;
    let mut block = vec![0u8; bs as usize];
    let max_raw_blocks = (MAX_RAW_CHUNK / bsz).max(1) as u32;
    // Pass 1: runs of (kind, blocks).
    let mut runs: Vec<(ChunkKind, u32)> = Vec::new();
    input
        .seek(SeekFrom::Start(0))
        .map_err(stream_err("sparse input"))?;
    for i in 0..u64::from(total_blocks) {
        read_block(input, &mut block, len - i * bsz)?;
        let mut kind = classify(&block);
        if opts.zeros_as_dont_care && kind == ChunkKind::Fill(0) {
            kind = ChunkKind::DontCare;
        }
        match runs.last_mut() {
            Some((k, n)) if *k == kind && !(kind == ChunkKind::Raw && *n >= max_raw_blocks) => {
                *n += 1
            }
            _ => runs.push((kind, 1)),
        }
    }
    let header = SparseHeader {
        block_size: bs,
        total_blocks,
        total_chunks: runs.len() as u32 + u32::from(opts.crc),
        image_checksum: 0,
    };
    let w = |out: &mut W, data: &[u8]| out.write_all(data).map_err(stream_err("sparse output"));
    let mut h = Vec::with_capacity(FILE_HEADER_LEN as usize);
    h.extend_from_slice(&SPARSE_MAGIC.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&FILE_HEADER_LEN.to_le_bytes());
    h.extend_from_slice(&CHUNK_HEADER_LEN.to_le_bytes());
    for v in [bs, total_blocks, header.total_chunks, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    w(out, &h)?;
    // Pass 2: chunks.
    input
        .seek(SeekFrom::Start(0))
        .map_err(stream_err("sparse input"))?;
    let mut crc = crc32fast::Hasher::new();
    let mut done = 0u64;
    for (kind, blocks) in runs {
        let (ty, payload) = match kind {
            ChunkKind::Raw => (CHUNK_RAW, u64::from(blocks) * bsz),
            ChunkKind::Fill(_) => (CHUNK_FILL, 4),
            _ => (CHUNK_DONT_CARE, 0),
        };
        w(out, &chunk_header(ty, blocks, payload))?;
        if let ChunkKind::Fill(v) = kind {
            w(out, &v.to_le_bytes())?;
        }
        for _ in 0..blocks {
            read_block(input, &mut block, len - done * bsz)?;
            crc.update(&block);
            if kind == ChunkKind::Raw {
                w(out, &block)?;
            }
            done += 1;
        }
    }
    if opts.crc {
        w(out, &chunk_header(CHUNK_CRC32, 0, 4))?;
        w(out, &crc.finalize().to_le_bytes())?;
    }
    out.flush().map_err(stream_err("sparse output"))?;
    Ok(header)
}

fn chunk_header(ty: u16, blocks: u32, payload: u64) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[..2].copy_from_slice(&ty.to_le_bytes());
    c[4..8].copy_from_slice(&blocks.to_le_bytes());
    c[8..].copy_from_slice(&((u64::from(CHUNK_HEADER_LEN) + payload) as u32).to_le_bytes());
    c
}

/// Reads one block (`left` input bytes remain; a short last block is zero-padded).
fn read_block(input: &mut impl Read, block: &mut [u8], left: u64) -> Result<()> {
    let n = (block.len() as u64).min(left) as usize;
    read_exact(input, &mut block[..n], "sparse input")?;
    block[n..].fill(0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn image() -> Vec<u8> {
        let mut img = vec![0u8; 4096 * 2];
        img.extend(std::iter::repeat_n(0xab, 4096 * 3));
        img.extend((0..4096 * 2).map(|i| (i % 251) as u8));
        img.extend([1, 2, 3]); // partial last block
        img
    }

    fn round_trip(opts: SparseOptions) -> (Vec<u8>, Vec<ChunkInfo>) {
        let raw = image();
        let mut sparse = Vec::new();
        sparsify(&mut Cursor::new(&raw), raw.len() as u64, &mut sparse, &opts).unwrap();
        let mut out = Cursor::new(Vec::new());
        let (_, chunks) = unsparse(&mut Cursor::new(&sparse), &mut out, 1 << 30).unwrap();
        let out = out.into_inner();
        assert_eq!(&out[..raw.len()], &raw[..]);
        assert!(out[raw.len()..].iter().all(|&b| b == 0));
        assert_eq!(out.len() % 4096, 0);
        (sparse, chunks)
    }

    #[test]
    fn round_trips_with_every_chunk_type() {
        let (_, chunks) = round_trip(SparseOptions {
            zeros_as_dont_care: true,
            crc: true,
            ..Default::default()
        });
        let kinds: Vec<ChunkKind> = chunks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds[0], ChunkKind::DontCare);
        assert_eq!(kinds[1], ChunkKind::Fill(0xabab_abab));
        assert_eq!(kinds[2], ChunkKind::Raw);
        assert!(matches!(kinds[3], ChunkKind::Crc32(_)));
        let (_, chunks) = round_trip(SparseOptions::default());
        assert_eq!(chunks[0].kind, ChunkKind::Fill(0));
    }

    #[test]
    fn hostile_sparse_images_are_rejected() {
        let raw = image();
        let mut good = Vec::new();
        sparsify(
            &mut Cursor::new(&raw),
            raw.len() as u64,
            &mut good,
            &SparseOptions {
                crc: true,
                ..Default::default()
            },
        )
        .unwrap();
        let err = |b: &[u8]| {
            unsparse(&mut Cursor::new(b), &mut Cursor::new(Vec::new()), 1 << 30)
                .unwrap_err()
                .to_string()
        };
        let mut b = good.clone();
        b[0] = 0;
        assert!(err(&b).contains("bad magic"));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert!(err(&b).contains("sparse.blk_sz = 4097"));
        let mut b = good.clone();
        b[28 + 8..28 + 12].copy_from_slice(&99u32.to_le_bytes());
        assert!(err(&b).contains("sparse.chunk[0].total_sz = 99"));
        let mut b = good.clone();
        b[16..20].copy_from_slice(&2u32.to_le_bytes());
        assert!(err(&b).contains("runs past total_blks 2"));
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(err(&b).contains("crc32: checksum mismatch"));
        assert!(err(&good[..good.len() - 10]).contains("truncated"));
        let mut b = good.clone();
        b[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&b).contains("limit"));
        let mut b = good.clone();
        b[28..30].copy_from_slice(&0xcac9u16.to_le_bytes());
        assert!(err(&b).contains("chunk_type = 0xcac9"));
    }
}
