//! Virtio block device: raw and qcow2-overlay backends.
//!
//! A phone's disks are `--disk path[,ro][,overlay=path][,id=NAME]`: a raw image served
//! directly, or a read-only raw base under a per-phone qcow2 overlay that takes every write
//! (the base never changes). [`DiskSpec`] parses the CLI syntax, [`DiskSpec::open`] yields a
//! [`DiskBackend`], and [`Block`] is the virtio-blk device serving it on a worker thread.

pub mod qcow2;

#[cfg(test)]
mod testutil;
