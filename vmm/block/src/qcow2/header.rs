//! The qcow2 header (versions 2 and 3): parsing with every field range-checked against the
//! file, and serialisation for the overlays we create.
//!
//! All on-disk integers are big-endian. Layout reference: QEMU `docs/interop/qcow2.txt`.

use super::Qcow2Error;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Header extension carrying the backing file's format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table (informational; we skip it).
const EXT_END: u32 = 0;
/// Length of a v3 header without the optional compression-type byte.
pub const V3_HEADER_LEN: u32 = 104;
/// Length of a v2 header.
const V2_HEADER_LEN: u32 = 72;
/// Smallest and largest cluster sizes QEMU accepts (512 B .. 2 MiB).
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU refuses L1 tables above 32 MiB; so do we (the whole L1 is kept in memory).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Cap on the refcount table (kept in memory too).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Largest virtual disk we serve (64 TiB): bounds every size-derived computation.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
/// Longest backing file name accepted (QEMU's limit is 1023).
pub const MAX_BACKING_NAME: u32 = 1023;
/// Only 16-bit refcounts (order 4, QEMU's default) are supported.
pub const REFCOUNT_ORDER: u32 = 4;

/// The parsed, validated header fields we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub header_length: u32,
    /// Backing file name as stored (relative names are relative to the image's directory).
    pub backing_file: Option<String>,
    /// Backing format from the header extension, if present.
    pub backing_format: Option<String>,
}

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4-byte slice"))
}

fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8-byte slice"))
}

fn field(name: &'static str, reason: String) -> Qcow2Error {
    Qcow2Error::BadHeader {
        field: name,
        reason,
    }
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Number of 8-byte entries in one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// L1 entries needed to map `size` bytes with this cluster size.
    pub fn l1_entries_needed(cluster_bits: u32, size: u64) -> u64 {
        let bytes_per_l1 = (1u64 << cluster_bits) * ((1u64 << cluster_bits) / 8);
        size.div_ceil(bytes_per_l1)
    }

    /// Parse and validate the header in `buf` (the image's first cluster, or as much of it as
    /// the file has). `file_len` bounds every table offset.
    pub fn parse(buf: &[u8], file_len: u64) -> Result<Self, Qcow2Error> {
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(field("header", format!("file is only {} bytes", buf.len())));
        }
        if be32(buf, 0) != MAGIC {
            return Err(Qcow2Error::NotQcow2);
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(field(
                "version",
                format!("{version} (only 2 and 3 are supported)"),
            ));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(field(
                "cluster_bits",
                format!("{cluster_bits} outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"),
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        if (buf.len() as u64) < cluster_size.min(file_len) {
            return Err(field("header", "short read of the header cluster".into()));
        }
        let size = be64(buf, 24);
        if size > MAX_VIRTUAL_SIZE {
            return Err(field(
                "size",
                format!("{size} exceeds the {MAX_VIRTUAL_SIZE}-byte cap"),
            ));
        }
        let crypt = be32(buf, 32);
        if crypt != 0 {
            return Err(field(
                "crypt_method",
                format!("{crypt} (encrypted images unsupported)"),
            ));
        }
        let (header_length, refcount_order) = if version == 3 {
            if buf.len() < V3_HEADER_LEN as usize {
                return Err(field("header", format!("file is only {} bytes", buf.len())));
            }
            let incompatible = be64(buf, 72);
            if incompatible != 0 {
                return Err(field(
                    "incompatible_features",
                    format!("{incompatible:#x} (dirty/corrupt/external data/compression/extended L2 unsupported; run `qemu-img check -r all`)"),
                ));
            }
            (be32(buf, 100), be32(buf, 96))
        } else {
            (V2_HEADER_LEN, REFCOUNT_ORDER)
        };
        if refcount_order != REFCOUNT_ORDER {
            return Err(field(
                "refcount_order",
                format!("{refcount_order} (only 16-bit refcounts, order 4)"),
            ));
        }
        if header_length < V2_HEADER_LEN.max(if version == 3 { V3_HEADER_LEN } else { 0 })
            || u64::from(header_length) > cluster_size
            || header_length as usize > buf.len()
        {
            return Err(field(
                "header_length",
                format!("{header_length} out of range"),
            ));
        }
        let l1_size = be32(buf, 36);
        let l1_table_offset = be64(buf, 40);
        let needed = Self::l1_entries_needed(cluster_bits, size);
        if u64::from(l1_size) < needed {
            return Err(field(
                "l1_size",
                format!("{l1_size} entries cannot map {size} bytes (need {needed})"),
            ));
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(field(
                "l1_size",
                format!("{l1_size} entries exceed the {MAX_L1_BYTES}-byte L1 cap"),
            ));
        }
        check_table(
            "l1_table_offset",
            l1_table_offset,
            l1_bytes,
            cluster_size,
            file_len,
        )?;
        let refcount_table_offset = be64(buf, 48);
        let refcount_table_clusters = be32(buf, 56);
        let rt_bytes = u64::from(refcount_table_clusters) * cluster_size;
        if refcount_table_clusters == 0 || rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(field(
                "refcount_table_clusters",
                format!(
                    "{refcount_table_clusters} (must be 1..={} bytes)",
                    MAX_REFCOUNT_TABLE_BYTES
                ),
            ));
        }
        check_table(
            "refcount_table_offset",
            refcount_table_offset,
            rt_bytes,
            cluster_size,
            file_len,
        )?;
        if l1_bytes > 0
            && ranges_overlap(l1_table_offset, l1_bytes, refcount_table_offset, rt_bytes)
        {
            return Err(field(
                "l1_table_offset",
                format!("L1 table at {l1_table_offset:#x} overlaps the refcount table at {refcount_table_offset:#x}"),
            ));
        }
        let nb_snapshots = be32(buf, 60);
        let backing_file_offset = be64(buf, 8);
        let backing_file_size = be32(buf, 16);
        let backing_file = if backing_file_offset == 0 {
            None
        } else {
            if backing_file_size == 0 || backing_file_size > MAX_BACKING_NAME {
                return Err(field(
                    "backing_file_size",
                    format!("{backing_file_size} out of 1..={MAX_BACKING_NAME}"),
                ));
            }
            let end = backing_file_offset.checked_add(u64::from(backing_file_size));
            match end {
                Some(end) if backing_file_offset >= u64::from(header_length) && end <= buf.len() as u64 && end <= cluster_size => {}
                _ => return Err(field("backing_file_offset", format!("{backing_file_offset:#x} (+{backing_file_size}) is outside the header cluster"))),
            }
            let raw = &buf[backing_file_offset as usize
                ..(backing_file_offset as usize + backing_file_size as usize)];
            Some(
                String::from_utf8(raw.to_vec())
                    .map_err(|_| field("backing_file", "name is not UTF-8".into()))?,
            )
        };
        let ext_end = backing_file
            .as_ref()
            .map_or(buf.len().min(cluster_size as usize), |_| {
                backing_file_offset as usize
            });
        let backing_format = parse_extensions(buf, header_length as usize, ext_end)?;
        Ok(Self {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            nb_snapshots,
            header_length,
            backing_file,
            backing_format,
        })
    }
}

/// A table must be cluster aligned, must not overlap the header cluster and must lie inside
/// the file.
fn check_table(
    name: &'static str,
    offset: u64,
    len: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), Qcow2Error> {
    if len == 0 {
        return Ok(());
    }
    if offset % cluster_size != 0 || offset < cluster_size {
        return Err(field(
            name,
            format!("{offset:#x} is not a cluster-aligned offset after the header"),
        ));
    }
    match offset.checked_add(len) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(field(
            name,
            format!("{offset:#x} + {len} bytes runs past the end of the file ({file_len} bytes)"),
        )),
    }
}

pub fn ranges_overlap(a: u64, a_len: u64, b: u64, b_len: u64) -> bool {
    a < b.saturating_add(b_len) && b < a.saturating_add(a_len)
}

/// Walk the header extensions between `start` and `end`; return the backing format if given.
fn parse_extensions(buf: &[u8], start: usize, end: usize) -> Result<Option<String>, Qcow2Error> {
    let mut pos = start;
    let mut format = None;
    while pos + 8 <= end {
        let kind = be32(buf, pos);
        let len = be32(buf, pos + 4) as usize;
        if kind == EXT_END {
            break;
        }
        let data_end = pos
            .checked_add(8 + len)
            .filter(|&e| e <= end)
            .ok_or_else(|| {
                field(
                    "header extension",
                    format!("extension {kind:#x} of {len} bytes runs past the header"),
                )
            })?;
        if kind == EXT_BACKING_FORMAT {
            format = Some(
                String::from_utf8(buf[pos + 8..data_end].to_vec())
                    .map_err(|_| field("backing format", "not UTF-8".into()))?,
            );
        }
        pos = pos + 8 + len.next_multiple_of(8);
    }
    Ok(format)
}
