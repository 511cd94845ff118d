//! crosvm's composite disk: the magic `composite_disk\x1d` followed by a protobuf
//! `CompositeDisk { uint64 version = 1; repeated ComponentDisk component_disks = 2;
//! uint64 length = 3; }` with `ComponentDisk { string file_path = 1; uint64 offset = 2;
//! ReadWriteCapability read_write_capability = 3; }`. The protobuf wire format is written and
//! read by hand (varints and length-delimited fields only).

use std::path::{Path, PathBuf};

use crate::bytes::escape;
use crate::error::{invalid, io_err, ImageError, Result};

/// File magic.
pub const COMPOSITE_MAGIC: &[u8; 15] = b"composite_disk\x1d";
/// The spec version crosvm writes today.
pub const COMPOSITE_VERSION: u64 = 2;
/// Largest spec file read: component lists are tiny; this bounds hostile input.
pub const MAX_SPEC_LEN: u64 = 1 << 20;
/// Most components accepted.
const MAX_COMPONENTS: usize = 4096;

/// One file mapped into the composite disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentDisk {
    /// Path of the backing file.
    pub file_path: String,
    /// Where the file starts in the composite disk.
    pub offset: u64,
    /// Whether the guest may write to it.
    pub writable: bool,
}

/// A composite disk specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompositeDisk {
    /// Spec version.
    pub version: u64,
    /// Components, sorted by offset.
    pub components: Vec<ComponentDisk>,
    /// Total disk length in bytes.
    pub length: u64,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, field << 3 | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    // proto3 omits default (zero) scalars.
    if v != 0 {
        put_tag(out, field, 0);
        put_varint(out, v);
    }
}

/// A protobuf field as read: number and value.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Minimal protobuf reader over a message body.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| invalid(self.what, "varint", "truncated protobuf"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid(self.what, "varint", "longer than 10 bytes"))
    }

    fn next(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            2 => {
                let len = self.varint()?;
                let end = (self.pos as u64)
                    .checked_add(len)
                    .filter(|&e| e <= self.buf.len() as u64)
                    .ok_or_else(|| {
                        invalid(
                            self.what,
                            format!("length {len}"),
                            "runs past the end of the message",
                        )
                    })?;
                let data = &self.buf[self.pos..end as usize];
                self.pos = end as usize;
                Value::Bytes(data)
            }
            1 => {
                self.skip(8)?;
                Value::Varint(0)
            }
            5 => {
                self.skip(4)?;
                Value::Varint(0)
            }
            w => {
                return Err(invalid(
                    self.what,
                    format!("wire type {w}"),
                    "unsupported protobuf wire type",
                ))
            }
        };
        Ok(Some((tag >> 3, value)))
    }

    fn skip(&mut self, n: usize) -> Result<()> {
        if self.pos + n > self.buf.len() {
            return Err(invalid(self.what, "fixed field", "truncated protobuf"));
        }
        self.pos += n;
        Ok(())
    }
}

impl CompositeDisk {
    /// Serializes the spec (magic + protobuf).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut msg = Vec::new();
        put_uint(&mut msg, 1, self.version);
        for c in &self.components {
            let mut sub = Vec::new();
            put_bytes(&mut sub, 1, c.file_path.as_bytes());
            put_uint(&mut sub, 2, c.offset);
            put_uint(&mut sub, 3, u64::from(c.writable));
            put_bytes(&mut msg, 2, &sub);
        }
        put_uint(&mut msg, 3, self.length);
        let mut out = COMPOSITE_MAGIC.to_vec();
        out.extend(msg);
        out
    }

    /// Parses a spec; checks magic, protobuf framing, and that components are sorted,
    /// non-overlapping and inside `length` (file sizes are checked by [`Self::check_files`]).
    pub fn parse(buf: &[u8]) -> Result<Self> {
        if buf.len() as u64 > MAX_SPEC_LEN {
            return Err(invalid(
                "composite spec size",
                buf.len(),
                format!("larger than {MAX_SPEC_LEN} bytes"),
            ));
        }
        if !buf.starts_with(COMPOSITE_MAGIC) {
            let n = buf.len().min(COMPOSITE_MAGIC.len());
            return Err(ImageError::BadMagic {
                what: "composite disk",
                found: escape(&buf[..n]),
                expected: escape(COMPOSITE_MAGIC),
            });
        }
        let mut fields = Fields {
            buf: &buf[COMPOSITE_MAGIC.len()..],
            pos: 0,
            what: "composite.CompositeDisk",
        };
        let mut disk = CompositeDisk {
            version: 0,
            components: Vec::new(),
            length: 0,
        };
        while let Some((field, value)) = fields.next()? {
            match (field, value) {
                (1, Value::Varint(v)) => disk.version = v,
                (3, Value::Varint(v)) => disk.length = v,
                (2, Value::Bytes(b)) => {
                    if disk.components.len() >= MAX_COMPONENTS {
                        return Err(invalid(
                            "composite.component_disks",
                            disk.components.len(),
                            "too many components",
                        ));
                    }
                    disk.components
                        .push(parse_component(b, disk.components.len())?);
                }
                (1..=3, _) => {
                    return Err(invalid(
                        "composite.CompositeDisk",
                        format!("field {field}"),
                        "wrong wire type",
                    ))
                }
                _ => {} // unknown fields are skipped, as protobuf requires
            }
        }
        if disk.version == 0 || disk.version > COMPOSITE_VERSION {
            return Err(invalid(
                "composite.version",
                disk.version,
                format!("supported versions are 1..={COMPOSITE_VERSION}"),
            ));
        }
        for (i, pair) in disk.components.windows(2).enumerate() {
            if pair[1].offset <= pair[0].offset {
                return Err(invalid(
                    format!("composite.component_disks[{}].offset", i + 1),
                    pair[1].offset,
                    "components must be sorted by offset without duplicates",
                ));
            }
        }
        if let Some(c) = disk.components.iter().find(|c| c.offset >= disk.length) {
            return Err(invalid(
                "composite.component offset",
                c.offset,
                format!("at or past the disk length {}", disk.length),
            ));
        }
        Ok(disk)
    }

    /// Checks each component file exists and fits before the next component (or the end),
    /// resolving relative paths against `base_dir`.
    pub fn check_files(&self, base_dir: &Path) -> Result<()> {
        for (i, c) in self.components.iter().enumerate() {
            let path = resolve(base_dir, &c.file_path);
            let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            let limit = self
                .components
                .get(i + 1)
                .map_or(self.length, |n| n.offset)
                .saturating_sub(c.offset);
            if len > limit {
                return Err(invalid(
                    format!("composite.component_disks[{i}]"),
                    format!("{} ({len} bytes)", path.display()),
                    format!("overlaps what follows: only {limit} bytes fit"),
                ));
            }
        }
        Ok(())
    }
}

/// Resolves a component path (absolute, or relative to the spec's directory).
pub fn resolve(base_dir: &Path, file_path: &str) -> PathBuf {
    let p = Path::new(file_path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

fn parse_component(buf: &[u8], index: usize) -> Result<ComponentDisk> {
    let mut fields = Fields {
        buf,
        pos: 0,
        what: "composite.ComponentDisk",
    };
    let mut c = ComponentDisk {
        file_path: String::new(),
        offset: 0,
        writable: false,
    };
    while let Some((field, value)) = fields.next()? {
        match (field, value) {
            (1, Value::Bytes(b)) => {
                c.file_path = String::from_utf8(b.to_vec()).map_err(|_| {
                    invalid(
                        format!("composite.component_disks[{index}].file_path"),
                        escape(b),
                        "not UTF-8",
                    )
                })?;
            }
            (2, Value::Varint(v)) => c.offset = v,
            (3, Value::Varint(v)) => {
                c.writable = match v {
                    0 => false,
                    1 => true,
                    v => {
                        return Err(invalid(
                            format!("composite.component_disks[{index}].read_write_capability"),
                            v,
                            "expected 0 (read-only) or 1 (read-write)",
                        ))
                    }
                };
            }
            (1..=3, _) => {
                return Err(invalid(
                    "composite.ComponentDisk",
                    format!("field {field}"),
                    "wrong wire type",
                ))
            }
            _ => {}
        }
    }
    if c.file_path.is_empty() {
        return Err(invalid(
            format!("composite.component_disks[{index}].file_path"),
            "\"\"",
            "empty path",
        ));
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CompositeDisk {
        CompositeDisk {
            version: 2,
            components: vec![
                ComponentDisk {
                    file_path: "/d/header.img".into(),
                    offset: 0,
                    writable: false,
                },
                ComponentDisk {
                    file_path: "/d/userdata.img".into(),
                    offset: 1 << 20,
                    writable: true,
                },
            ],
            length: 300 << 20,
        }
    }

    #[test]
    fn hand_encoded_vector() {
        let disk = CompositeDisk {
            version: 2,
            components: vec![ComponentDisk {
                file_path: "a".into(),
                offset: 300,
                writable: true,
            }],
            length: 1000,
        };
        // 08 02 | 12 len=8 { 0a 01 'a' | 10 ac 02 | 18 01 } (8 bytes) | 18 e8 07
        let mut expected = COMPOSITE_MAGIC.to_vec();
        expected.extend([
            0x08, 0x02, 0x12, 0x08, 0x0a, 0x01, b'a', 0x10, 0xac, 0x02, 0x18, 0x01, 0x18, 0xe8,
            0x07,
        ]);
        assert_eq!(disk.to_bytes(), expected);
        assert_eq!(CompositeDisk::parse(&expected).unwrap(), disk);
    }

    #[test]
    fn round_trip_and_errors() {
        let d = sample();
        assert_eq!(CompositeDisk::parse(&d.to_bytes()).unwrap(), d);
        let err = |b: &[u8]| CompositeDisk::parse(b).unwrap_err().to_string();
        assert!(err(b"qcow").contains("bad magic"));
        let bytes = d.to_bytes();
        assert!(err(&bytes[..bytes.len() - 3]).contains("protobuf"));
        let mut unsorted = d.clone();
        unsorted.components.swap(0, 1);
        assert!(err(&unsorted.to_bytes()).contains("sorted"));
        let mut v = d.clone();
        v.version = 9;
        assert!(err(&v.to_bytes()).contains("composite.version = 9"));
        let missing = d.check_files(Path::new("/")).unwrap_err().to_string();
        assert!(missing.contains("/d/header.img"), "{missing}");
    }
}
