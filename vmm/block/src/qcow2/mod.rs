//! Our own qcow2 (v3) implementation: per-phone copy-on-write overlays over a read-only raw
//! base image.
//!
//! Scope: what a phone overlay needs and nothing more. Reads fall through unallocated clusters
//! to the backing file (or zeros); writes allocate clusters (copying the rest of the cluster
//! from the backing file), keep refcounts exact so `qemu-img check` stays clean, and update
//! metadata write-through (so a flush is a single fsync). Compressed clusters, encryption,
//! external data files, extended L2 and snapshots (for writing) are refused with a clear error.
//! Every offset read from the image is validated before use: the file is untrusted.

mod create;
mod disk;
mod header;
mod table;

pub use create::create_overlay;
pub use disk::Qcow2Disk;

use std::path::PathBuf;

/// Why a qcow2 image could not be opened, read or written. Each variant names the offending
/// field or table entry so a broken image can be diagnosed with `qemu-img check`.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// The file does not start with the qcow2 magic.
    #[error("not a qcow2 image (bad magic); pass raw images without overlay=")]
    NotQcow2,
    /// A header field is out of range or unsupported.
    #[error("invalid qcow2 header field `{field}`: {reason}")]
    BadHeader { field: &'static str, reason: String },
    /// A table entry (L1, L2, refcount) points somewhere it must not.
    #[error("corrupt qcow2 metadata in {what}: {reason}; run `qemu-img check`")]
    BadTable { what: String, reason: String },
    /// The backing file is missing, unreadable or not a raw image.
    #[error("qcow2 backing file {path:?}: {reason}")]
    Backing { path: PathBuf, reason: String },
    /// The image uses a feature we do not implement.
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// Growing the image file further would pass our cap (a corrupt or hostile image).
    #[error("qcow2 image would grow past its {cap}-byte allocation cap")]
    AllocationCap { cap: u64 },
    /// A request reaches past the virtual disk size.
    #[error("request at byte {offset} + {len} is past the qcow2 virtual size {size}")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The image was opened read-only.
    #[error("qcow2 image is open read-only")]
    ReadOnly,
    /// The image (or its base) is locked by another user.
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
    /// An I/O error on the image file.
    #[error("qcow2 I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Qcow2Error {
    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { context, source }
    }
}

#[cfg(test)]
mod tests;
