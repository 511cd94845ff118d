//! [`Qcow2Disk`]: reads, copy-on-write writes, zeroing and flush on an open qcow2 image.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::header::{ranges_overlap, Header, MAGIC};
use super::table::{
    Mapping, TableCache, COMPRESSED, COPIED, L1_RESERVED, L2_RESERVED, OFFSET_MASK, ZERO,
};
use super::Qcow2Error;

/// L2 tables kept in memory (64 KiB each at the default cluster size).
const L2_CACHE_TABLES: usize = 64;
/// Refcount blocks kept in memory.
const REFCOUNT_CACHE_BLOCKS: usize = 16;

/// The read-only base image below an overlay.
struct Backing {
    file: File,
    size: u64,
}

/// An open qcow2 image. Not thread-safe by itself: the block worker owns it.
pub struct Qcow2Disk {
    file: File,
    path: PathBuf,
    header: Header,
    backing: Option<Backing>,
    writable: bool,
    /// The whole L1 table (bounded by `MAX_L1_BYTES`).
    l1: Vec<u64>,
    /// The whole refcount table (bounded by `MAX_REFCOUNT_TABLE_BYTES`).
    refcount_table: Vec<u64>,
    l2_cache: TableCache<u64>,
    refcount_cache: TableCache<u16>,
    /// Host file length in whole clusters; new clusters are appended here.
    file_len: u64,
    /// Clusters freed since open, reused before the file grows.
    free: Vec<u64>,
    /// The file never grows past this (enough for every cluster of the virtual disk).
    alloc_cap: u64,
}

/// Read into `buf` at `offset`; bytes past the end of the file read as zeros.
fn read_fill(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Split the byte range `offset..offset+len` at cluster boundaries:
/// yields (cluster start, offset within cluster, length, position in the request).
fn cluster_chunks(
    offset: u64,
    len: usize,
    cluster_size: u64,
) -> impl Iterator<Item = (u64, u64, usize, usize)> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= len {
            return None;
        }
        let at = offset + pos as u64;
        let within = at % cluster_size;
        let n = ((cluster_size - within) as usize).min(len - pos);
        let item = (at - within, within, n, pos);
        pos += n;
        Some(item)
    })
}

impl Qcow2Disk {
    /// Open the qcow2 image at `path` (read-write if `writable`) and its raw backing file
    /// (always read-only). Validates the header and the fixed tables.
    pub fn open(path: &Path, writable: bool) -> Result<Self, Qcow2Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(Qcow2Error::io("opening the image"))?;
        crate::lock::lock_image(&file, path, writable)?;
        let meta_len = file
            .metadata()
            .map_err(Qcow2Error::io("reading image metadata"))?
            .len();
        let mut first = vec![0u8; 4096];
        read_fill(&file, &mut first, 0).map_err(Qcow2Error::io("reading the header"))?;
        // The cluster size is in the first bytes; read the whole header cluster once it is known.
        let bits = u32::from_be_bytes([first[20], first[21], first[22], first[23]]);
        let mut buf = first;
        if (super::header::MIN_CLUSTER_BITS..=super::header::MAX_CLUSTER_BITS).contains(&bits) {
            let want = (1u64 << bits).min(meta_len.max(4096)) as usize;
            buf.resize(want, 0);
            read_fill(&file, &mut buf, 0).map_err(Qcow2Error::io("reading the header cluster"))?;
        }
        let header = Header::parse(&buf, meta_len)?;
        if writable && header.nb_snapshots != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "writing images with snapshots ({} present); delete them with `qemu-img snapshot -d`",
                header.nb_snapshots
            )));
        }
        let cs = header.cluster_size();
        let backing = match &header.backing_file {
            Some(name) => Some(open_backing(path, name, header.backing_format.as_deref())?),
            None => None,
        };
        let l1 = read_table(
            &file,
            header.l1_table_offset,
            header.l1_size as usize,
            "reading the L1 table",
        )?;
        let rt_entries = (u64::from(header.refcount_table_clusters) * cs / 8) as usize;
        let refcount_table = read_table(
            &file,
            header.refcount_table_offset,
            rt_entries,
            "reading the refcount table",
        )?;
        let file_len = meta_len.next_multiple_of(cs);
        let data = header.size.next_multiple_of(cs);
        let l2 = (data / cs).div_ceil(header.l2_entries()) * cs;
        let refblocks = ((file_len + data + l2) / cs).div_ceil(cs / 2) * cs + cs;
        let alloc_cap = file_len + data + l2 + refblocks + 4 * cs;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            header,
            backing,
            writable,
            l1,
            refcount_table,
            l2_cache: TableCache::new(L2_CACHE_TABLES),
            refcount_cache: TableCache::new(REFCOUNT_CACHE_BLOCKS),
            file_len,
            free: Vec::new(),
            alloc_cap,
        })
    }

    /// Virtual disk size in bytes.
    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// The image's path (for error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.header.size => Ok(()),
            _ => Err(Qcow2Error::OutOfRange {
                offset,
                len,
                size: self.header.size,
            }),
        }
    }

    /// Read `buf.len()` bytes at guest `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
        self.check_range(offset, buf.len() as u64)?;
        for (cluster, within, n, pos) in cluster_chunks(offset, buf.len(), self.cluster_size()) {
            let out = &mut buf[pos..pos + n];
            match self.lookup(cluster)? {
                Mapping::Unallocated => self.read_backing(out, cluster + within)?,
                Mapping::Zero { .. } => out.fill(0),
                Mapping::Data { host, .. } => read_fill(&self.file, out, host + within)
                    .map_err(Qcow2Error::io("reading a data cluster"))?,
            }
        }
        Ok(())
    }

    /// Write `buf` at guest `offset`, allocating (copy-on-write) clusters as needed.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), Qcow2Error> {
        self.ensure_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        let cs = self.cluster_size();
        for (cluster, within, n, pos) in cluster_chunks(offset, buf.len(), cs) {
            let data = &buf[pos..pos + n];
            let mapping = self.lookup(cluster)?;
            if let Mapping::Data { host, copied: true } = mapping {
                self.file
                    .write_all_at(data, host + within)
                    .map_err(Qcow2Error::io("writing a data cluster"))?;
                continue;
            }
            let mut full = vec![0u8; cs as usize];
            if (n as u64) < cs {
                match mapping {
                    Mapping::Unallocated => self.read_backing(&mut full, cluster)?,
                    Mapping::Data { host, .. } => read_fill(&self.file, &mut full, host)
                        .map_err(Qcow2Error::io("reading a shared cluster"))?,
                    Mapping::Zero { .. } => {}
                }
            }
            full[within as usize..within as usize + n].copy_from_slice(data);
            let host = self.alloc_cluster()?;
            self.file
                .write_all_at(&full, host)
                .map_err(Qcow2Error::io("writing a new data cluster"))?;
            self.set_l2(cluster, host | COPIED)?;
            self.release(mapping)?;
        }
        Ok(())
    }

    /// Make `offset..offset+len` read as zeros. Whole clusters become zero clusters (their
    /// host space is freed); partial clusters are written with zeros only if `partial_too`
    /// (write-zeroes must zero them, discard may skip them).
    pub fn zero_range(
        &mut self,
        offset: u64,
        len: u64,
        partial_too: bool,
    ) -> Result<(), Qcow2Error> {
        self.ensure_writable()?;
        self.check_range(offset, len)?;
        let cs = self.cluster_size();
        let len = usize::try_from(len).map_err(|_| Qcow2Error::OutOfRange {
            offset,
            len,
            size: self.header.size,
        })?;
        for (cluster, within, n, _) in cluster_chunks(offset, len, cs) {
            if n as u64 == cs && self.header.version >= 3 {
                let mapping = self.lookup(cluster)?;
                if mapping == (Mapping::Zero { host: 0 })
                    || (mapping == Mapping::Unallocated && self.backing.is_none())
                {
                    continue;
                }
                self.set_l2(cluster, ZERO)?;
                self.release(mapping)?;
            } else if partial_too {
                let zeros = vec![0u8; n];
                self.write_at(&zeros, cluster + within)?;
            }
        }
        Ok(())
    }

    /// Make every completed write durable: data and metadata share the file and metadata is
    /// written through, so one fsync covers both.
    pub fn flush(&mut self) -> Result<(), Qcow2Error> {
        if self.writable {
            self.file
                .sync_all()
                .map_err(Qcow2Error::io("fsync of the image"))?;
        }
        Ok(())
    }

    fn ensure_writable(&self) -> Result<(), Qcow2Error> {
        if self.writable {
            Ok(())
        } else {
            Err(Qcow2Error::ReadOnly)
        }
    }

    fn read_backing(&self, out: &mut [u8], offset: u64) -> Result<(), Qcow2Error> {
        match &self.backing {
            Some(b) if offset < b.size => {
                let n = ((b.size - offset) as usize).min(out.len());
                read_fill(&b.file, &mut out[..n], offset)
                    .map_err(Qcow2Error::io("reading the backing file"))?;
                out[n..].fill(0);
            }
            _ => out.fill(0),
        }
        Ok(())
    }

    fn indices(&self, guest: u64) -> (usize, usize) {
        let cluster = guest >> self.header.cluster_bits;
        let per_l2 = self.header.l2_entries();
        ((cluster / per_l2) as usize, (cluster % per_l2) as usize)
    }

    /// A host offset read from the image must be cluster aligned, clear of the header, L1 and
    /// refcount tables, and (for metadata) wholly inside the file.
    fn check_host(
        &self,
        what: impl FnOnce() -> String,
        host: u64,
        whole_cluster: bool,
    ) -> Result<(), Qcow2Error> {
        let cs = self.cluster_size();
        let h = &self.header;
        let rt_len = u64::from(h.refcount_table_clusters) * cs;
        let reason = if host % cs != 0 {
            Some("offset is not cluster aligned".to_string())
        } else if host < cs {
            Some("points into the header cluster".into())
        } else if ranges_overlap(host, cs, h.l1_table_offset, u64::from(h.l1_size) * 8) {
            Some("overlaps the L1 table".into())
        } else if ranges_overlap(host, cs, h.refcount_table_offset, rt_len) {
            Some("overlaps the refcount table".into())
        } else if host >= self.file_len || (whole_cluster && host + cs > self.file_len) {
            Some(format!(
                "offset {host:#x} is past the end of the file ({} bytes)",
                self.file_len
            ))
        } else {
            None
        };
        match reason {
            None => Ok(()),
            Some(reason) => Err(Qcow2Error::BadTable {
                what: what(),
                reason,
            }),
        }
    }

    /// The L2 table offset for `l1_idx`, or 0 if none is allocated.
    fn l2_offset(&self, l1_idx: usize) -> Result<u64, Qcow2Error> {
        let entry = self.l1[l1_idx];
        if entry & L1_RESERVED != 0 {
            return Err(Qcow2Error::BadTable {
                what: format!("L1 entry {l1_idx}"),
                reason: format!("reserved bits set in {entry:#x}"),
            });
        }
        let off = entry & OFFSET_MASK;
        if off != 0 {
            let what = || format!("L1 entry {l1_idx}");
            self.check_host(what, off, true)?;
            if self.refcount_table.contains(&off) {
                return Err(Qcow2Error::BadTable {
                    what: what(),
                    reason: format!("L2 table at {off:#x} overlaps a refcount block"),
                });
            }
        }
        Ok(off)
    }

    fn load_l2(&mut self, off: u64) -> Result<&mut Vec<u64>, Qcow2Error> {
        if self.l2_cache.get_mut(off).is_none() {
            let table = read_table(
                &self.file,
                off,
                self.header.l2_entries() as usize,
                "reading an L2 table",
            )?;
            self.l2_cache.insert(off, table);
        }
        Ok(self.l2_cache.get_mut(off).expect("just inserted"))
    }

    fn lookup(&mut self, guest: u64) -> Result<Mapping, Qcow2Error> {
        let (l1_idx, l2_idx) = self.indices(guest);
        let l2_off = self.l2_offset(l1_idx)?;
        if l2_off == 0 {
            return Ok(Mapping::Unallocated);
        }
        let entry = self.load_l2(l2_off)?[l2_idx];
        let what =
            || format!("L2 entry {l2_idx} of the table at {l2_off:#x} (guest offset {guest:#x})");
        if entry & COMPRESSED != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "compressed cluster at guest offset {guest:#x}"
            )));
        }
        if entry & L2_RESERVED != 0 {
            return Err(Qcow2Error::BadTable {
                what: what(),
                reason: format!("reserved bits set in {entry:#x}"),
            });
        }
        let mapping = Mapping::from_l2(entry);
        match mapping {
            Mapping::Data { host, .. } | Mapping::Zero { host } if host != 0 => {
                self.check_host(what, host, false)?
            }
            _ => {}
        }
        Ok(mapping)
    }

    /// Point the guest cluster at `guest` to `entry`, allocating its L2 table if needed.
    fn set_l2(&mut self, guest: u64, entry: u64) -> Result<(), Qcow2Error> {
        let (l1_idx, l2_idx) = self.indices(guest);
        let mut l2_off = self.l2_offset(l1_idx)?;
        if l2_off == 0 {
            l2_off = self.alloc_cluster()?;
            self.file
                .write_all_at(&vec![0u8; self.cluster_size() as usize], l2_off)
                .map_err(Qcow2Error::io("writing a new L2 table"))?;
            self.l2_cache
                .insert(l2_off, vec![0; self.header.l2_entries() as usize]);
            self.write_l1(l1_idx, l2_off | COPIED)?;
        } else if self.l1[l1_idx] & COPIED == 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "L1 entry {l1_idx} is shared (snapshot); cannot write in place"
            )));
        }
        self.load_l2(l2_off)?[l2_idx] = entry;
        self.file
            .write_all_at(&entry.to_be_bytes(), l2_off + l2_idx as u64 * 8)
            .map_err(Qcow2Error::io("updating an L2 entry"))
    }

    fn write_l1(&mut self, idx: usize, entry: u64) -> Result<(), Qcow2Error> {
        self.l1[idx] = entry;
        self.file
            .write_all_at(
                &entry.to_be_bytes(),
                self.header.l1_table_offset + idx as u64 * 8,
            )
            .map_err(Qcow2Error::io("updating an L1 entry"))
    }

    /// Drop the reference a guest cluster held on its old host cluster.
    fn release(&mut self, old: Mapping) -> Result<(), Qcow2Error> {
        match old {
            Mapping::Data { host, .. } | Mapping::Zero { host } if host != 0 => self.decref(host),
            _ => Ok(()),
        }
    }

    /// Allocate one host cluster with refcount 1: a freed one, else at the end of the file
    /// (creating the refcount block that covers it when needed).
    fn alloc_cluster(&mut self) -> Result<u64, Qcow2Error> {
        if let Some(host) = self.free.pop() {
            self.set_refcount(host, 1)?;
            return Ok(host);
        }
        let cs = self.cluster_size();
        let per_block = cs / 2;
        loop {
            let host = self.file_len;
            if host + cs > self.alloc_cap {
                return Err(Qcow2Error::AllocationCap {
                    cap: self.alloc_cap,
                });
            }
            let index = host / cs;
            let rt_idx = (index / per_block) as usize;
            if rt_idx >= self.refcount_table.len() {
                return Err(Qcow2Error::Unsupported(
                    "refcount table is full (growing it is not implemented)".into(),
                ));
            }
            self.file_len += cs;
            if self.refcount_table[rt_idx] != 0 {
                self.set_refcount(host, 1)?;
                return Ok(host);
            }
            // No refcount block covers this cluster yet: make it that block (covering itself).
            let mut block = vec![0u16; per_block as usize];
            block[(index % per_block) as usize] = 1;
            let bytes: Vec<u8> = block.iter().flat_map(|v| v.to_be_bytes()).collect();
            self.file
                .write_all_at(&bytes, host)
                .map_err(Qcow2Error::io("writing a new refcount block"))?;
            self.refcount_cache.insert(host, block);
            self.refcount_table[rt_idx] = host;
            self.file
                .write_all_at(
                    &host.to_be_bytes(),
                    self.header.refcount_table_offset + rt_idx as u64 * 8,
                )
                .map_err(Qcow2Error::io("updating the refcount table"))?;
        }
    }

    /// Locate (and cache) the refcount block entry for `host`: (block offset, index).
    fn refcount_slot(&mut self, host: u64) -> Result<(u64, usize), Qcow2Error> {
        let cs = self.cluster_size();
        let per_block = cs / 2;
        let index = host / cs;
        let rt_idx = (index / per_block) as usize;
        let what = || format!("refcount table entry {rt_idx}");
        let block = match self.refcount_table.get(rt_idx) {
            Some(&b) if b != 0 => b,
            _ => {
                return Err(Qcow2Error::BadTable {
                    what: what(),
                    reason: format!("no refcount block for cluster {host:#x} in use"),
                })
            }
        };
        self.check_host(what, block, true)?;
        if self.refcount_cache.get_mut(block).is_none() {
            if self.l1.iter().any(|&e| e & OFFSET_MASK == block) {
                return Err(Qcow2Error::BadTable {
                    what: what(),
                    reason: format!("refcount block at {block:#x} overlaps an L2 table"),
                });
            }
            let mut raw = vec![0u8; cs as usize];
            self.file
                .read_exact_at(&mut raw, block)
                .map_err(Qcow2Error::io("reading a refcount block"))?;
            let table = raw
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            self.refcount_cache.insert(block, table);
        }
        Ok((block, (index % per_block) as usize))
    }

    fn set_refcount(&mut self, host: u64, value: u16) -> Result<(), Qcow2Error> {
        let (block, idx) = self.refcount_slot(host)?;
        self.refcount_cache
            .get_mut(block)
            .expect("cached by refcount_slot")[idx] = value;
        self.file
            .write_all_at(&value.to_be_bytes(), block + idx as u64 * 2)
            .map_err(Qcow2Error::io("updating a refcount"))
    }

    fn decref(&mut self, host: u64) -> Result<(), Qcow2Error> {
        let (block, idx) = self.refcount_slot(host)?;
        let current = self
            .refcount_cache
            .get_mut(block)
            .expect("cached by refcount_slot")[idx];
        if current == 0 {
            return Err(Qcow2Error::BadTable {
                what: format!("refcount of cluster {host:#x}"),
                reason: "cluster in use has refcount 0".into(),
            });
        }
        self.set_refcount(host, current - 1)?;
        if current == 1 {
            punch_hole(&self.file, host, self.cluster_size());
            self.free.push(host);
        }
        Ok(())
    }
}

/// Give a freed cluster's space back to the host filesystem (best effort: a filesystem without
/// hole punching just keeps the stale bytes, which nothing references).
fn punch_hole(file: &File, offset: u64, len: u64) {
    // SAFETY: fallocate on an fd we own with in-range arguments; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        tracing::debug!(offset, error = %std::io::Error::last_os_error(), "qcow2: punching a freed cluster failed");
    }
}

/// Read a table of `count` big-endian u64 entries at `offset` (size capped by the header checks).
fn read_table(
    file: &File,
    offset: u64,
    count: usize,
    context: &'static str,
) -> Result<Vec<u64>, Qcow2Error> {
    let mut raw = vec![0u8; count * 8];
    read_fill(file, &mut raw, offset).map_err(Qcow2Error::io(context))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Open the raw backing file read-only; relative names are relative to the overlay's directory.
fn open_backing(image: &Path, name: &str, format: Option<&str>) -> Result<Backing, Qcow2Error> {
    let path = Path::new(name);
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(path)
    };
    let err = |reason: String| Qcow2Error::Backing {
        path: path.clone(),
        reason,
    };
    if let Some(fmt) = format {
        if fmt != "raw" {
            return Err(err(format!(
                "format {fmt:?} is not supported; bases must be raw images"
            )));
        }
    }
    let file = File::open(&path).map_err(|e| err(format!("cannot open read-only: {e}")))?;
    crate::lock::lock_image(&file, &path, false)?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    let mut magic = [0u8; 4];
    read_fill(&file, &mut magic, 0).map_err(|e| err(e.to_string()))?;
    if format.is_none() && u32::from_be_bytes(magic) == MAGIC {
        return Err(err("is itself a qcow2 image; bases must be raw".into()));
    }
    Ok(Backing { file, size })
}
