//! qcow2 (version 3) copy-on-write overlays over a base image: an empty L1 table and the
//! refcounts of the metadata clusters, with the backing file and its format recorded, so
//! each phone writes to its own small file while sharing one base. Also reads the header
//! back for `inspect`.

use crate::bytes::{escape, slice_at};
use crate::error::{invalid, ImageError, Result};

/// `QFI\xfb`.
pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Cluster size exponent (64 KiB clusters, qemu's default).
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Length of the v3 header this crate writes.
const HEADER_LEN: u32 = 104;
/// Header extension: backing file format name.
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// qemu refuses backing file names longer than this.
const MAX_BACKING_NAME: usize = 1023;
/// Largest virtual size accepted (64 TiB): keeps the L1 table within one refcount block.
const MAX_SIZE: u64 = 64 << 40;

/// What `inspect` reports about a qcow2 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Info {
    /// Format version (2 or 3).
    pub version: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Backing file name, if any.
    pub backing_file: Option<String>,
}

/// Builds an empty overlay of `size` bytes over `backing_file` (format `backing_format`,
/// e.g. `raw`); relative backing paths are resolved by readers against the overlay's dir.
pub fn create_overlay(size: u64, backing_file: &str, backing_format: &str) -> Result<Vec<u8>> {
    if size == 0 || size > MAX_SIZE {
        return Err(invalid("qcow2 size", size, "must be within 1..=64 TiB"));
    }
    if backing_file.is_empty() || backing_file.len() > MAX_BACKING_NAME {
        return Err(invalid(
            "qcow2 backing file",
            backing_file,
            "must be 1..=1023 bytes",
        ));
    }
    if backing_format.is_empty()
        || backing_format.len() > 16
        || !backing_format.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(invalid(
            "qcow2 backing format",
            backing_format,
            "expected a format name such as raw or qcow2",
        ));
    }
    let l2_entries = CLUSTER / 8;
    let l1_size = size.div_ceil(CLUSTER * l2_entries);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
    // Layout: header | refcount table | refcount block | L1 table.
    let (refcount_table, refcount_block, l1_table) = (CLUSTER, 2 * CLUSTER, 3 * CLUSTER);
    let clusters = 3 + l1_clusters;
    let mut out = vec![0u8; (clusters * CLUSTER) as usize];
    let mut h = Vec::with_capacity(HEADER_LEN as usize);
    let be32 = |h: &mut Vec<u8>, v: u32| h.extend_from_slice(&v.to_be_bytes());
    let be64 = |h: &mut Vec<u8>, v: u64| h.extend_from_slice(&v.to_be_bytes());
    h.extend_from_slice(QCOW2_MAGIC);
    be32(&mut h, 3);
    let ext_len = 8 + backing_format.len().div_ceil(8) * 8;
    let backing_offset = u64::from(HEADER_LEN) + ext_len as u64 + 8;
    be64(&mut h, backing_offset);
    be32(&mut h, backing_file.len() as u32);
    be32(&mut h, CLUSTER_BITS);
    be64(&mut h, size);
    be32(&mut h, 0); // no encryption
    be32(&mut h, l1_size as u32);
    be64(&mut h, l1_table);
    be64(&mut h, refcount_table);
    be32(&mut h, 1); // refcount table clusters
    be32(&mut h, 0); // snapshots
    be64(&mut h, 0);
    be64(&mut h, 0); // incompatible features
    be64(&mut h, 0); // compatible features
    be64(&mut h, 0); // autoclear features
    be32(&mut h, 4); // 16-bit refcounts
    be32(&mut h, HEADER_LEN);
    be32(&mut h, EXT_BACKING_FORMAT);
    be32(&mut h, backing_format.len() as u32);
    h.extend_from_slice(backing_format.as_bytes());
    h.resize(HEADER_LEN as usize + ext_len, 0);
    h.extend_from_slice(&[0; 8]); // end of extensions
    h.extend_from_slice(backing_file.as_bytes());
    out[..h.len()].copy_from_slice(&h);
    out[refcount_table as usize..][..8].copy_from_slice(&refcount_block.to_be_bytes());
    for c in 0..clusters as usize {
        out[refcount_block as usize + 2 * c..][..2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(out)
}

/// Reads the header fields `inspect` shows.
pub fn parse_header(buf: &[u8]) -> Result<Qcow2Info> {
    let head = slice_at(buf, "qcow2 header", 0, 72)?;
    if &head[..4] != QCOW2_MAGIC {
        return Err(ImageError::BadMagic {
            what: "qcow2",
            found: escape(&head[..4]),
            expected: escape(QCOW2_MAGIC),
        });
    }
    let be32 = |i: usize| u32::from_be_bytes(head[i..i + 4].try_into().unwrap_or_default());
    let be64 = |i: usize| u64::from_be_bytes(head[i..i + 8].try_into().unwrap_or_default());
    let version = be32(4);
    if !(2..=3).contains(&version) {
        return Err(invalid("qcow2.version", version, "expected 2 or 3"));
    }
    let cluster_bits = be32(20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(invalid(
            "qcow2.cluster_bits",
            cluster_bits,
            "must be within 9..=21",
        ));
    }
    let (name_off, name_len) = (be64(8), be32(16));
    let backing_file = if name_off == 0 {
        None
    } else {
        if name_len as usize > MAX_BACKING_NAME {
            return Err(invalid(
                "qcow2.backing_file_size",
                name_len,
                "longer than 1023 bytes",
            ));
        }
        let raw = slice_at(
            buf,
            "qcow2 backing file name",
            name_off,
            u64::from(name_len),
        )?;
        Some(
            String::from_utf8(raw.to_vec())
                .map_err(|_| invalid("qcow2.backing_file", escape(raw), "not UTF-8"))?,
        )
    };
    Ok(Qcow2Info {
        version,
        size: be64(24),
        cluster_size: 1 << cluster_bits,
        backing_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_header_fields() {
        let img = create_overlay(3 << 30, "base.img", "raw").unwrap();
        // 3 GiB needs 6 L1 entries (512 MiB each): one L1 cluster, 4 clusters in all.
        assert_eq!(img.len() as u64, 4 * CLUSTER);
        assert_eq!(u32::from_be_bytes(img[36..40].try_into().unwrap()), 6);
        let info = parse_header(&img).unwrap();
        assert_eq!(
            info,
            Qcow2Info {
                version: 3,
                size: 3 << 30,
                cluster_size: CLUSTER,
                backing_file: Some("base.img".into())
            }
        );
        assert_eq!(&img[2 * CLUSTER as usize..][..8], &[0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn bad_input() {
        assert!(create_overlay(0, "b", "raw").is_err());
        assert!(create_overlay(1, "", "raw").is_err());
        assert!(create_overlay(1, "b", "r w").is_err());
        let mut img = create_overlay(1 << 20, "b", "raw").unwrap();
        img[16..20].copy_from_slice(&5000u32.to_be_bytes());
        assert!(parse_header(&img)
            .unwrap_err()
            .to_string()
            .contains("qcow2.backing_file_size = 5000"));
        assert!(parse_header(b"QFI").is_err());
    }
}
