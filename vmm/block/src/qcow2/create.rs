//! Creating an empty qcow2 v3 overlay over a raw base image.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{MAGIC, MAX_VIRTUAL_SIZE};
use super::Qcow2Error;

/// Create a new qcow2 v3 image at `overlay` whose unwritten clusters read from the raw image
/// `base` (recorded by absolute path, format `raw`), with a virtual size of `size` bytes
/// (a non-zero multiple of 512). Refuses to overwrite an existing file. The base is only
/// opened read-only.
///
/// The image itself is laid out by [`android_images::qcow2::create_overlay`] (the one qcow2
/// writer in the workspace, shared with `cloudphone-image`); this adds the base checks and
/// the careful file creation.
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
        .ok_or_else(|| base_err("path is not UTF-8 or too long for the qcow2 header".into()))?;

    let image = android_images::qcow2::create_overlay(size, name, "raw").map_err(|e| {
        Qcow2Error::BadHeader {
            field: "overlay",
            reason: e.to_string(),
        }
    })?;

    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(overlay)
        .map_err(Qcow2Error::io(
            "creating the overlay file (it must not exist yet)",
        ))?;
    out.write_all_at(&image, 0)
        .map_err(Qcow2Error::io("writing the new overlay"))?;
    out.sync_all()
        .map_err(Qcow2Error::io("fsync of the new overlay"))?;
    tracing::info!(overlay = %overlay.display(), base = %base_abs.display(), size, "created qcow2 overlay");
    Ok(())
}
