//! Guest RAM in a snapshot: one file holding every RAM region back to back (the layout of
//! [`crate::memory::ram_ranges`]), zero pages left as holes. A restore maps the file
//! `MAP_PRIVATE`: pages load on first touch and writes stay private to the clone, so many
//! clones of one snapshot share every page none of them wrote.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::memory::{ram_ranges, GuestMemoryMmap};

/// The host page size the hole detection works in.
const PAGE: usize = 4096;

/// Why guest RAM could not be saved or mapped back.
#[derive(Debug, thiserror::Error)]
pub enum MemorySnapshotError {
    /// Reading, writing or mapping the memory file failed.
    #[error("snapshot memory file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold as much RAM as the state file says.
    #[error("snapshot memory file {path} holds {len} bytes but the snapshot's guest has {want} bytes of RAM: the snapshot is incomplete or from another VM")]
    Size {
        /// The file.
        path: String,
        /// Its length.
        len: u64,
        /// The RAM size in the state file.
        want: u64,
    },
    /// vm-memory refused the mapping.
    #[error("mapping snapshot memory file {path}: {why}")]
    Map {
        /// The file.
        path: String,
        /// vm-memory's reason.
        why: String,
    },
}

/// Write every region of `mem` into `path` (created or truncated), skipping zero pages so the
/// file is sparse; synced before returning.
pub fn save(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, MemorySnapshotError> {
    let io = |what| {
        move |source| MemorySnapshotError::Io {
            path: path.display().to_string(),
            what,
            source,
        }
    };
    let mut file = File::create(path).map_err(io("create"))?;
    let mut total = 0u64;
    let zero = [0u8; PAGE];
    for region in mem.iter() {
        let len = region.len() as usize;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .expect("offset 0 is inside every region");
        // SAFETY: the region is a live mapping of `len` bytes owned by `mem`; the vCPUs are
        // paused, so nothing writes it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        for page in bytes.chunks(PAGE) {
            if page == &zero[..page.len()] {
                file.seek(SeekFrom::Current(page.len() as i64))
                    .map_err(io("seek"))?;
            } else {
                file.write_all(page).map_err(io("write"))?;
            }
        }
        total += len as u64;
    }
    file.set_len(total).map_err(io("set_len"))?;
    file.sync_all().map_err(io("sync"))?;
    Ok(total)
}

/// Total guest RAM of `mem` in bytes.
pub fn ram_bytes(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Map `path`, a memory file for a guest of `size` bytes, as that guest's RAM: private,
/// copy-on-write, loaded on demand.
pub fn map_private(path: &Path, size: u64) -> Result<GuestMemoryMmap, MemorySnapshotError> {
    let name = || path.display().to_string();
    let file = File::open(path).map_err(|source| MemorySnapshotError::Io {
        path: name(),
        what: "open",
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| MemorySnapshotError::Io {
            path: name(),
            what: "stat",
            source,
        })?
        .len();
    if len != size {
        return Err(MemorySnapshotError::Size {
            path: name(),
            len,
            want: size,
        });
    }
    let file = Arc::new(file);
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, region_len) in ram_ranges(size) {
        let mapping = MmapRegionBuilder::new(region_len as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemorySnapshotError::Map {
                path: name(),
                why: e.to_string(),
            })?;
        regions.push(GuestRegionMmap::new(mapping, start).ok_or_else(|| {
            MemorySnapshotError::Map {
                path: name(),
                why: format!("region at {:#x} overflows the address space", start.0),
            }
        })?);
        offset += region_len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemorySnapshotError::Map {
        path: name(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{Bytes, GuestAddress};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cp-memsnap-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("memory")
    }

    #[test]
    fn saved_ram_maps_back_private_and_sparse() {
        let path = scratch("roundtrip");
        let mem = create_guest_memory(64 << 20).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x2000)).unwrap();
        mem.write_obj(0xabcdu16, GuestAddress((64 << 20) - 2))
            .unwrap();
        assert_eq!(save(&mem, &path).unwrap(), 64 << 20);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "zero pages are holes: {} blocks",
            meta.blocks()
        );

        let a = map_private(&path, 64 << 20).unwrap();
        let b = map_private(&path, 64 << 20).unwrap();
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0x1234_5678
        );
        assert_eq!(
            a.read_obj::<u16>(GuestAddress((64 << 20) - 2)).unwrap(),
            0xabcd
        );
        // Writes are private to each clone and never reach the file.
        a.write_obj(7u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0x1234_5678
        );
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&File::open(&path).unwrap(), &mut word, 0x2000)
            .unwrap();
        assert_eq!(word, 0x1234_5678u32.to_le_bytes());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let path = scratch("size");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let err = map_private(&path, 64 << 20).unwrap_err();
        assert!(
            matches!(err, MemorySnapshotError::Size { len: 4096, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
