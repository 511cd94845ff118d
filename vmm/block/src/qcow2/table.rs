//! L1/L2 entry encoding and a small bounded cache for metadata clusters.

use std::collections::HashMap;

/// Bits 9..=55 of an L1/L2 entry: the host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount of the pointed-to cluster is exactly one (it may be written in place).
pub const COPIED: u64 = 1 << 63;
/// L2 only: the cluster is compressed (unsupported).
pub const COMPRESSED: u64 = 1 << 62;
/// L2 only (v3): the cluster reads as zeros.
pub const ZERO: u64 = 1;
/// Bits that must be clear in an L1 entry.
pub const L1_RESERVED: u64 = !(OFFSET_MASK | COPIED);
/// Bits that must be clear in a standard (uncompressed) L2 entry.
pub const L2_RESERVED: u64 = !(OFFSET_MASK | COPIED | COMPRESSED | ZERO);

/// What one guest cluster maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Not allocated here: read from the backing file (or zeros without one).
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster that may be reused (0 if none).
    Zero { host: u64 },
    /// Data at `host`; `copied` means refcount 1 (writable in place).
    Data { host: u64, copied: bool },
}

impl Mapping {
    /// Decode an L2 entry (reserved and compressed bits are the caller's to reject).
    pub fn from_l2(entry: u64) -> Self {
        let host = entry & OFFSET_MASK;
        if entry & ZERO != 0 {
            Mapping::Zero { host }
        } else if host == 0 {
            Mapping::Unallocated
        } else {
            Mapping::Data {
                host,
                copied: entry & COPIED != 0,
            }
        }
    }
}

/// A bounded map from a metadata cluster's host offset to its decoded contents. Tables are
/// written through to the file on every change, so every cached entry is clean and eviction
/// needs no write-back.
pub struct TableCache<T> {
    tables: HashMap<u64, Vec<T>>,
    cap: usize,
}

impl<T> TableCache<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            tables: HashMap::new(),
            cap,
        }
    }

    pub fn get_mut(&mut self, offset: u64) -> Option<&mut Vec<T>> {
        self.tables.get_mut(&offset)
    }

    /// Insert `table`, evicting an arbitrary (clean) table when full.
    pub fn insert(&mut self, offset: u64, table: Vec<T>) -> &mut Vec<T> {
        if self.tables.len() >= self.cap && !self.tables.contains_key(&offset) {
            if let Some(&victim) = self.tables.keys().next() {
                self.tables.remove(&victim);
            }
        }
        self.tables.entry(offset).or_insert(table)
    }
}
