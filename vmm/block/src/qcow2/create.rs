//! Creating an empty qcow2 v3 overlay over a raw base image.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{Header, MAGIC, MAX_VIRTUAL_SIZE};
use super::Qcow2Error;

/// 64 KiB clusters, QEMU's default.
const CLUSTER_BITS: u32 = 16;

/// Create a new qcow2 v3 image at `overlay` whose unwritten clusters read from the raw image
/// `base` (recorded by absolute path, format `raw`), with a virtual size of `size` bytes
/// (a non-zero multiple of 512). Refuses to overwrite an existing file. The base is only
/// opened read-only.
///
/// Layout: header, refcount table, one refcount block, then the L1 table (all clusters).
pub fn create_overlay(base: &Path, overlay: &Path, size: u64) -> Result<(), Qcow2Error> {
    let bad_size = |reason: &str| Qcow2Error::BadHeader {
        field: "size",
        reason: format!("{size}: {reason}"),
    };
    if size == 0 || size % 512 != 0 {
        return Err(bad_size("must be a non-zero multiple of 512"));
    }
    if size > MAX_VIRTUAL_SIZE {
        return Err(bad_size("exceeds the 64 TiB cap"));
    }
    let base_err = |reason: String| Qcow2Error::Backing {
        path: base.to_path_buf(),
        reason,
    };
    let base_abs =
        std::fs::canonicalize(base).map_err(|e| base_err(format!("cannot resolve: {e}")))?;
    let mut magic = [0u8; 4];
    let base_file =
        File::open(&base_abs).map_err(|e| base_err(format!("cannot open read-only: {e}")))?;
    if base_file
        .read_at(&mut magic, 0)
        .map_err(|e| base_err(e.to_string()))?
        == 4
        && u32::from_be_bytes(magic) == MAGIC
    {
        return Err(base_err("is a qcow2 image; bases must be raw".into()));
    }
    let name = base_abs
        .to_str()
        .filter(|n| n.len() <= 1023 - 64)
        .ok_or_else(|| base_err("path is not UTF-8 or too long for the qcow2 header".into()))?
        .to_string();

    let cs = 1u64 << CLUSTER_BITS;
    let l1_size = Header::l1_entries_needed(CLUSTER_BITS, size).max(1);
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let header = Header {
        version: 3,
        cluster_bits: CLUSTER_BITS,
        size,
        l1_size: l1_size as u32,
        l1_table_offset: 3 * cs,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        nb_snapshots: 0,
        header_length: super::header::V3_HEADER_LEN,
        backing_file: Some(name),
        backing_format: Some("raw".into()),
    };
    let total_clusters = 3 + l1_clusters;
    let mut refcount_table = vec![0u8; cs as usize];
    refcount_table[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    let mut refcount_block = vec![0u8; cs as usize];
    for i in 0..total_clusters as usize {
        refcount_block[i * 2..i * 2 + 2].copy_from_slice(&1u16.to_be_bytes());
    }

    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(overlay)
        .map_err(Qcow2Error::io(
            "creating the overlay file (it must not exist yet)",
        ))?;
    let write = |buf: &[u8], off: u64| {
        out.write_all_at(buf, off)
            .map_err(Qcow2Error::io("writing the new overlay"))
    };
    write(&header.to_bytes(), 0)?;
    write(&refcount_table, cs)?;
    write(&refcount_block, 2 * cs)?;
    out.set_len(total_clusters * cs)
        .map_err(Qcow2Error::io("sizing the new overlay"))?;
    out.sync_all()
        .map_err(Qcow2Error::io("fsync of the new overlay"))?;
    tracing::info!(overlay = %overlay.display(), base = %base_abs.display(), size, "created qcow2 overlay");
    Ok(())
}
