//! A 2D resource: its pixels on the host and the guest pages backing it (a scatter list checked
//! against guest memory when attached and copied from with overflow-safe offsets).

use cloudphone_virtio::GuestMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use super::backend::{BackingEntry, GpuError};
use crate::framebuffer::PixelFormat;

/// Guest pages attached to a resource, with each entry's start offset for binary search.
pub(crate) struct Backing {
    entries: Vec<BackingEntry>,
    starts: Vec<u64>,
    total: u64,
}

impl Backing {
    /// Validate every entry lies inside guest memory.
    pub(crate) fn new(mem: &GuestMemory, entries: Vec<BackingEntry>) -> Result<Self, GpuError> {
        let mut starts = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for (i, e) in entries.iter().enumerate() {
            if e.addr.checked_add(u64::from(e.len)).is_none()
                || !mem.check_range(GuestAddress(e.addr), e.len as usize)
            {
                return Err(GpuError::InvalidParameter(format!(
                    "backing entry {i} ({:#x}, {} bytes) is outside guest memory",
                    e.addr, e.len
                )));
            }
            starts.push(total);
            total += u64::from(e.len);
        }
        Ok(Self {
            entries,
            starts,
            total,
        })
    }

    /// The scatter list as attached.
    pub(crate) fn entries(&self) -> &[BackingEntry] {
        &self.entries
    }

    /// Number of scatter-list entries.
    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Total bytes of backing.
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// Copy `dst.len()` bytes starting at backing offset `offset` into `dst`.
    /// The caller checked `offset + dst.len() <= len()`.
    pub(crate) fn copy_to(
        &self,
        mem: &GuestMemory,
        offset: u64,
        dst: &VolatileSlice,
    ) -> Result<(), GpuError> {
        let mut index = self
            .starts
            .partition_point(|&s| s <= offset)
            .saturating_sub(1);
        let mut pos = offset;
        let mut done = 0usize;
        while done < dst.len() {
            let entry = self
                .entries
                .get(index)
                .ok_or_else(|| backing_short(offset, dst.len()))?;
            let within = pos - self.starts[index];
            let n = (u64::from(entry.len) - within).min((dst.len() - done) as u64) as usize;
            let mut addr = GuestAddress(entry.addr + within);
            for piece in mem.get_slices(addr, n) {
                let piece = piece
                    .map_err(|e| GpuError::Unspec(format!("reading backing at {addr:#x?}: {e}")))?;
                let out = dst
                    .subslice(done, piece.len())
                    .map_err(|e| GpuError::Unspec(format!("copy destination: {e}")))?;
                piece.copy_to_volatile_slice(out);
                done += piece.len();
                addr = GuestAddress(addr.0 + piece.len() as u64);
            }
            pos += n as u64;
            index += 1;
        }
        Ok(())
    }
}

fn backing_short(offset: u64, len: usize) -> GpuError {
    GpuError::InvalidParameter(format!(
        "transfer of {len} bytes at backing offset {offset} runs past the backing"
    ))
}

/// Where a resource's pixels live on the host.
pub(crate) enum Storage {
    /// Private host memory.
    Host(Vec<u8>),
    /// In the exported framebuffer: this resource is on the scanout.
    Scanout,
}

/// One 2D resource.
pub(crate) struct Resource {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub backing: Option<Backing>,
    pub storage: Storage,
}

impl Resource {
    /// Bytes per row.
    pub(crate) fn stride(&self) -> u32 {
        self.width * PixelFormat::BYTES_PER_PIXEL
    }

    /// Bytes of pixel storage.
    pub(crate) fn bytes(&self) -> u64 {
        u64::from(self.stride()) * u64::from(self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 0x10000), (GuestAddress(0x20000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn rejects_entries_outside_memory_or_overflowing() {
        let m = mem();
        let bad = [
            BackingEntry {
                addr: 0xf000,
                len: 0x2000,
            }, // runs into the hole
            BackingEntry {
                addr: 0x21000,
                len: 1,
            }, // past the end
            BackingEntry {
                addr: u64::MAX - 2,
                len: 16,
            }, // wraps
        ];
        for e in bad {
            assert!(
                matches!(
                    Backing::new(&m, vec![e]),
                    Err(GpuError::InvalidParameter(_))
                ),
                "{e:?}"
            );
        }
        assert_eq!(
            Backing::new(
                &m,
                vec![BackingEntry {
                    addr: 0x20000,
                    len: 0x1000
                }]
            )
            .unwrap()
            .len(),
            0x1000
        );
    }

    #[test]
    fn copies_across_scattered_entries() {
        let m = mem();
        m.write_slice(&[1, 2, 3], GuestAddress(0x100)).unwrap();
        m.write_slice(&[4, 5], GuestAddress(0x20010)).unwrap();
        m.write_slice(&[6, 7, 8, 9], GuestAddress(0x500)).unwrap();
        let backing = Backing::new(
            &m,
            vec![
                BackingEntry {
                    addr: 0x100,
                    len: 3,
                },
                BackingEntry {
                    addr: 0x20010,
                    len: 2,
                },
                BackingEntry {
                    addr: 0x500,
                    len: 4,
                },
            ],
        )
        .unwrap();
        let mut out = [0u8; 6];
        backing
            .copy_to(&m, 2, &VolatileSlice::from(&mut out[..]))
            .unwrap();
        assert_eq!(out, [3, 4, 5, 6, 7, 8]);
    }
}
