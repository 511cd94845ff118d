//! Virtio block device: raw and qcow2-overlay backends.
//!
//! A phone's disks are `--disk path[,ro][,overlay=path][,id=NAME]`: a raw image served
//! directly, or a read-only raw base under a per-phone qcow2 overlay that takes every write
//! (the base never changes). [`DiskSpec`] parses the CLI syntax, [`DiskSpec::open`] yields a
//! [`DiskBackend`], and [`Block`] is the virtio-blk device serving it on a worker thread.
//!
//! ```ignore
//! for (i, arg) in config.disk.iter().enumerate() {
//!     let spec: DiskSpec = arg.parse()?;      // DiskSpecError: bad syntax (exit code 2)
//!     let block = Block::from_spec(&spec)?;   // DiskError: missing file, corrupt qcow2, ...
//!     let pci = VirtioPciDevice::new(Box::new(block), guest_mem.clone(), msi)?; // 00:10.0 + i
//! }
//! ```
//!
//! Per-phone copy-on-write: `--disk base.img,overlay=phone1.qcow2` creates the overlay on first
//! use (virtual size = base size) and never opens the base for writing; [`qcow2::create_overlay`]
//! does the same ahead of time.

// `x % n != 0` instead of `is_multiple_of` (stable only since 1.87; the workspace MSRV is 1.85).
#![allow(clippy::manual_is_multiple_of)]

mod backend;
mod device;
mod guest_io;
pub mod lock;
pub mod qcow2;
mod raw;
mod request;
mod spec;

pub use backend::{DiskBackend, DiskError};
pub use device::Block;
pub use guest_io::GuestIo;
pub use raw::RawDisk;
pub use request::RequestError;
pub use spec::{DiskSpec, DiskSpecError, MAX_ID_LEN};

#[cfg(test)]
mod driver_tests;
#[cfg(test)]
mod testutil;
