//! GUID partition tables: protective MBR, primary header + entry array at the start, backup
//! entry array + header at the end, CRC32s over both (UEFI spec, chapter 5). Used to build
//! the Cuttlefish-like phone disk and to read partition tables back.

use std::io::{Read, Seek, SeekFrom};

use sha1::{Digest, Sha1};

use crate::bytes::{escape, put_u32, put_u64, FieldReader};
use crate::error::{invalid, stream_err, ImageError, Result};

/// Logical sector size.
pub const SECTOR: u64 = 512;
/// Entries in the array (the UEFI minimum array size is 16 KiB = 128 x 128 bytes).
pub const ENTRY_COUNT: u32 = 128;
/// Size of one entry.
pub const ENTRY_SIZE: u32 = 128;
/// Sectors holding the entry array.
pub const ENTRY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Sectors before the first usable LBA: MBR, header, entries.
pub const HEADER_SECTORS: u64 = 2 + ENTRY_SECTORS;
/// Sectors of the backup at the end: entries, header.
pub const FOOTER_SECTORS: u64 = 1 + ENTRY_SECTORS;
/// Where the first partition starts by default (1 MiB, like every modern partitioner).
pub const FIRST_PARTITION_LBA: u64 = 2048;
/// Largest entry count accepted when reading (bounds the entry array read).
const MAX_READ_ENTRIES: u32 = 1024;
/// "Linux filesystem data", the type Cuttlefish gives its Android partitions.
pub const LINUX_FS_TYPE: Guid = Guid::from_str_const("0FC63DAF-8483-4772-8E79-3D69D8477DE4");
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;

/// A GUID stored in the on-disk (mixed-endian) byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the textual form at compile time (panics only on a malformed literal).
    pub const fn from_str_const(s: &str) -> Self {
        let b = s.as_bytes();
        let mut hex = [0u8; 16];
        let (mut i, mut n) = (0, 0);
        while i < b.len() {
            if b[i] != b'-' {
                let d = match b[i] {
                    c @ b'0'..=b'9' => c - b'0',
                    c @ b'a'..=b'f' => c - b'a' + 10,
                    c @ b'A'..=b'F' => c - b'A' + 10,
                    _ => panic!("bad GUID literal"),
                };
                hex[n / 2] |= if n % 2 == 0 { d << 4 } else { d };
                n += 1;
            }
            i += 1;
        }
        // First three groups are little-endian on disk.
        let o = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
        let mut out = [0u8; 16];
        let mut k = 0;
        while k < 16 {
            out[k] = hex[o[k]];
            k += 1;
        }
        Self(out)
    }

    /// A stable, version-4-shaped GUID derived from `seed` (so rebuilt images are identical).
    pub fn derived(seed: &str) -> Self {
        let digest = Sha1::digest(seed.as_bytes());
        let mut g = [0u8; 16];
        g.copy_from_slice(&digest[..16]);
        g[7] = (g[7] & 0x0f) | 0x40; // version 4 (byte 7 is the high byte of time_hi, LE)
        g[8] = (g[8] & 0x3f) | 0x80; // RFC 4122 variant
        Self(g)
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9]
        )?;
        g[10..].iter().try_for_each(|b| write!(f, "{b:02X}"))
    }
}

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Partition name (UTF-16 on disk, at most 36 code units).
    pub name: String,
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub unique_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
}

impl Partition {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }

    /// Byte offset on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
}

/// A partition table for a disk of `disk_sectors` sectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// Disk size in sectors.
    pub disk_sectors: u64,
    /// Partitions in entry order.
    pub partitions: Vec<Partition>,
}

impl Gpt {
    /// Lays out partitions of the given byte sizes back to back from LBA 2048, each rounded up
    /// to `align` bytes (a power-of-two multiple of 512), with names and GUIDs derived from
    /// `disk_name` so builds are reproducible.
    pub fn lay_out(disk_name: &str, parts: &[(&str, u64)], align: u64) -> Result<Self> {
        if !align.is_power_of_two() || align < SECTOR {
            return Err(invalid(
                "gpt alignment",
                align,
                "must be a power of two of at least 512",
            ));
        }
        if parts.len() > ENTRY_COUNT as usize {
            return Err(invalid("gpt partitions", parts.len(), "at most 128"));
        }
        let mut lba = FIRST_PARTITION_LBA.max(align / SECTOR);
        let mut partitions = Vec::new();
        for (name, size) in parts {
            check_name(name)?;
            let size =
                crate::bytes::align_up((*size).max(1), align, &format!("partition {name} size"))?;
            let sectors = size / SECTOR;
            partitions.push(Partition {
                name: name.to_string(),
                type_guid: LINUX_FS_TYPE,
                unique_guid: Guid::derived(&format!("{disk_name}/{name}")),
                first_lba: lba,
                last_lba: lba + sectors - 1,
                attributes: 0,
            });
            lba += sectors;
        }
        Ok(Self {
            disk_guid: Guid::derived(disk_name),
            disk_sectors: lba + FOOTER_SECTORS,
            partitions,
        })
    }

    /// Last sector a partition may use.
    pub fn last_usable(&self) -> u64 {
        self.disk_sectors.saturating_sub(FOOTER_SECTORS + 1)
    }

    /// The entry array bytes.
    fn entries(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity((ENTRY_COUNT * ENTRY_SIZE) as usize);
        for p in &self.partitions {
            out.extend_from_slice(&p.type_guid.0);
            out.extend_from_slice(&p.unique_guid.0);
            put_u64(&mut out, p.first_lba);
            put_u64(&mut out, p.last_lba);
            put_u64(&mut out, p.attributes);
            let mut name: Vec<u16> = p.name.encode_utf16().collect();
            name.resize(36, 0);
            name.iter()
                .for_each(|u| out.extend_from_slice(&u.to_le_bytes()));
        }
        out.resize((ENTRY_COUNT * ENTRY_SIZE) as usize, 0);
        out
    }

    fn header(&self, primary: bool, entries_crc: u32) -> Vec<u8> {
        let last = self.disk_sectors - 1;
        let (my, alt, entries_lba) = if primary {
            (1, last, 2)
        } else {
            (last, 1, last - ENTRY_SECTORS)
        };
        let mut h = Vec::with_capacity(SECTOR as usize);
        h.extend_from_slice(SIGNATURE);
        put_u32(&mut h, REVISION);
        put_u32(&mut h, HEADER_SIZE);
        put_u32(&mut h, 0); // CRC, filled below
        put_u32(&mut h, 0);
        put_u64(&mut h, my);
        put_u64(&mut h, alt);
        put_u64(&mut h, HEADER_SECTORS);
        put_u64(&mut h, self.last_usable());
        h.extend_from_slice(&self.disk_guid.0);
        put_u64(&mut h, entries_lba);
        put_u32(&mut h, ENTRY_COUNT);
        put_u32(&mut h, ENTRY_SIZE);
        put_u32(&mut h, entries_crc);
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h.resize(SECTOR as usize, 0);
        h
    }

    fn check(&self) -> Result<()> {
        if self.disk_sectors < HEADER_SECTORS + FOOTER_SECTORS + 1 {
            return Err(invalid(
                "gpt disk size",
                self.disk_sectors,
                "too small for the tables",
            ));
        }
        let mut sorted: Vec<&Partition> = self.partitions.iter().collect();
        sorted.sort_by_key(|p| p.first_lba);
        for (i, p) in sorted.iter().enumerate() {
            check_name(&p.name)?;
            if p.first_lba < HEADER_SECTORS
                || p.last_lba > self.last_usable()
                || p.last_lba < p.first_lba
            {
                return Err(invalid(
                    format!("gpt partition {}", p.name),
                    format!("{}..={}", p.first_lba, p.last_lba),
                    format!(
                        "outside the usable sectors {HEADER_SECTORS}..={}",
                        self.last_usable()
                    ),
                ));
            }
            if i > 0 && sorted[i - 1].last_lba >= p.first_lba {
                return Err(invalid(
                    format!("gpt partition {}", p.name),
                    p.first_lba,
                    format!("overlaps partition {}", sorted[i - 1].name),
                ));
            }
        }
        Ok(())
    }

    /// Protective MBR + primary header + entries: the first [`HEADER_SECTORS`] sectors.
    pub fn primary_bytes(&self) -> Result<Vec<u8>> {
        self.check()?;
        let entries = self.entries();
        let mut out = protective_mbr(self.disk_sectors);
        out.extend(self.header(true, crc32fast::hash(&entries)));
        out.extend(entries);
        Ok(out)
    }

    /// Backup entries + backup header: the last [`FOOTER_SECTORS`] sectors.
    pub fn backup_bytes(&self) -> Result<Vec<u8>> {
        self.check()?;
        let mut out = self.entries();
        let crc = crc32fast::hash(&out);
        out.extend(self.header(false, crc));
        Ok(out)
    }

    /// Reads and verifies a partition table from a disk of `disk_len` bytes: protective MBR,
    /// primary header and entry CRCs, and the backup header's agreement with the primary.
    pub fn read<R: Read + Seek>(disk: &mut R, disk_len: u64) -> Result<Self> {
        let disk_sectors = disk_len / SECTOR;
        if disk_sectors < HEADER_SECTORS + FOOTER_SECTORS + 1 {
            return Err(invalid(
                "gpt disk size",
                disk_len,
                "too small to hold a GPT",
            ));
        }
        let mbr = read_at(disk, 0, SECTOR as usize, "protective MBR")?;
        if mbr[510..512] != [0x55, 0xaa] || mbr[446 + 4] != 0xee {
            return Err(invalid(
                "gpt protective MBR",
                escape(&mbr[446 + 4..446 + 5]),
                "expected a 0xEE partition and 0x55AA signature",
            ));
        }
        let primary = read_header(disk, 1, "gpt primary header")?;
        if primary.alt_lba != disk_sectors - 1 {
            return Err(invalid(
                "gpt primary header.alternate_lba",
                primary.alt_lba,
                format!("the disk's last sector is {}", disk_sectors - 1),
            ));
        }
        let backup = read_header(disk, primary.alt_lba, "gpt backup header")?;
        if (backup.disk_guid, backup.entries_crc, backup.count)
            != (primary.disk_guid, primary.entries_crc, primary.count)
        {
            return Err(invalid(
                "gpt backup header",
                primary.alt_lba,
                "disagrees with the primary header",
            ));
        }
        let entries_at = primary
            .entries_lba
            .checked_mul(SECTOR)
            .filter(|&at| at < disk_len)
            .ok_or_else(|| {
                invalid(
                    "gpt primary header.partition_entry_lba",
                    primary.entries_lba,
                    "past the end of the disk",
                )
            })?;
        let entries = read_at(
            disk,
            entries_at,
            (primary.count * ENTRY_SIZE) as usize,
            "gpt entries",
        )?;
        let computed = crc32fast::hash(&entries);
        if computed != primary.entries_crc {
            return Err(ImageError::Checksum {
                what: "gpt partition entries".into(),
                stored: primary.entries_crc,
                computed,
            });
        }
        let mut partitions = Vec::new();
        for (i, e) in entries.chunks_exact(ENTRY_SIZE as usize).enumerate() {
            let mut r = FieldReader::new(e, 0, "gpt entry");
            let type_guid = Guid(r.array()?);
            if type_guid == Guid::default() {
                continue;
            }
            let unique_guid = Guid(r.array()?);
            let (first_lba, last_lba, attributes) = (r.u64()?, r.u64()?, r.u64()?);
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let name = String::from_utf16(&units).map_err(|_| {
                invalid(format!("gpt entry[{i}].name"), "UTF-16", "not valid UTF-16")
            })?;
            partitions.push(Partition {
                name,
                type_guid,
                unique_guid,
                first_lba,
                last_lba,
                attributes,
            });
        }
        let gpt = Self {
            disk_guid: primary.disk_guid,
            disk_sectors,
            partitions,
        };
        gpt.check()?;
        Ok(gpt)
    }
}

struct HeaderFields {
    alt_lba: u64,
    entries_lba: u64,
    count: u32,
    entries_crc: u32,
    disk_guid: Guid,
}

fn read_at<R: Read + Seek>(disk: &mut R, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    disk.seek(SeekFrom::Start(offset))
        .map_err(stream_err(what))?;
    let mut buf = vec![0u8; len];
    disk.read_exact(&mut buf).map_err(stream_err(what))?;
    Ok(buf)
}

fn read_header<R: Read + Seek>(disk: &mut R, lba: u64, what: &'static str) -> Result<HeaderFields> {
    let h = read_at(disk, lba * SECTOR, SECTOR as usize, what)?;
    if &h[..8] != SIGNATURE {
        return Err(ImageError::BadMagic {
            what,
            found: escape(&h[..8]),
            expected: escape(SIGNATURE),
        });
    }
    let mut r = FieldReader::new(&h, 8, what);
    let _revision = r.u32()?;
    let size = r.u32()?;
    if !(HEADER_SIZE..=SECTOR as u32).contains(&size) {
        return Err(invalid(
            format!("{what}.header_size"),
            size,
            "must be within 92..=512",
        ));
    }
    let stored = r.u32()?;
    let mut copy = h[..size as usize].to_vec();
    copy[16..20].fill(0);
    let computed = crc32fast::hash(&copy);
    if computed != stored {
        return Err(ImageError::Checksum {
            what: what.into(),
            stored,
            computed,
        });
    }
    r.u32()?;
    let my_lba = r.u64()?;
    if my_lba != lba {
        return Err(invalid(
            format!("{what}.my_lba"),
            my_lba,
            format!("header found at sector {lba}"),
        ));
    }
    let alt_lba = r.u64()?;
    r.u64()?;
    r.u64()?;
    let disk_guid = Guid(r.array()?);
    let entries_lba = r.u64()?;
    let count = r.u32()?;
    let entry_size = r.u32()?;
    let entries_crc = r.u32()?;
    if entry_size != ENTRY_SIZE {
        return Err(invalid(
            format!("{what}.partition_entry_size"),
            entry_size,
            "only 128 is supported",
        ));
    }
    if count > MAX_READ_ENTRIES {
        return Err(invalid(
            format!("{what}.num_partition_entries"),
            count,
            format!("more than {MAX_READ_ENTRIES}"),
        ));
    }
    Ok(HeaderFields {
        alt_lba,
        entries_lba,
        count,
        entries_crc,
        disk_guid,
    })
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.encode_utf16().count() > 36 {
        return Err(invalid(
            "gpt partition name",
            name,
            "must be 1..=36 UTF-16 code units",
        ));
    }
    Ok(())
}

/// A protective MBR: one 0xEE partition covering the disk (capped at 2^32 - 1 sectors).
fn protective_mbr(disk_sectors: u64) -> Vec<u8> {
    let mut mbr = vec![0u8; SECTOR as usize];
    let e = &mut mbr[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xee;
    e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = (disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
    e[12..16].copy_from_slice(&size.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// The partition set of the phone disk, in Cuttlefish's order.
pub const PHONE_PARTITIONS: [&str; 12] = [
    "misc",
    "boot_a",
    "boot_b",
    "init_boot_a",
    "init_boot_b",
    "vendor_boot_a",
    "vendor_boot_b",
    "vbmeta_a",
    "vbmeta_b",
    "super",
    "userdata",
    "metadata",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn disk(gpt: &Gpt) -> Vec<u8> {
        let mut d = gpt.primary_bytes().unwrap();
        d.resize(((gpt.disk_sectors - FOOTER_SECTORS) * SECTOR) as usize, 0);
        d.extend(gpt.backup_bytes().unwrap());
        d
    }

    #[test]
    fn guid_text_form_round_trips() {
        assert_eq!(
            LINUX_FS_TYPE.to_string(),
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        );
        assert_eq!(LINUX_FS_TYPE.0[..4], [0xaf, 0x3d, 0xc6, 0x0f]);
        let g = Guid::derived("x");
        assert_eq!(g.to_string().as_bytes()[14], b'4');
    }

    #[test]
    fn layout_write_read() {
        let gpt = Gpt::lay_out(
            "phone",
            &[("misc", 1), ("boot_a", 5 << 20), ("userdata", 3 << 20)],
            4096,
        )
        .unwrap();
        assert_eq!(gpt.partitions[0].first_lba, 2048);
        assert_eq!(gpt.partitions[1].first_lba, 2048 + 8);
        let d = disk(&gpt);
        assert_eq!(d.len() as u64, gpt.disk_sectors * SECTOR);
        let back = Gpt::read(&mut Cursor::new(&d), d.len() as u64).unwrap();
        assert_eq!(back, gpt);
    }

    #[test]
    fn corruption_is_detected() {
        let gpt = Gpt::lay_out("phone", &[("misc", 4096)], 4096).unwrap();
        let d = disk(&gpt);
        let read = |d: &[u8]| {
            Gpt::read(&mut Cursor::new(d), d.len() as u64)
                .unwrap_err()
                .to_string()
        };
        let mut b = d.clone();
        b[512 + 40] ^= 1;
        assert!(read(&b).contains("gpt primary header: checksum mismatch"));
        let mut b = d.clone();
        b[1024] ^= 1;
        assert!(read(&b).contains("gpt partition entries: checksum mismatch"));
        let mut b = d.clone();
        b[510] = 0;
        assert!(read(&b).contains("protective MBR"));
        let mut b = d.clone();
        b.truncate(b.len() - 512);
        assert!(read(&b).contains("alternate_lba"));
        assert!(Gpt::lay_out("p", &[("", 1)], 4096).is_err());
        let mut bad = gpt.clone();
        bad.partitions.push(Partition {
            name: "x".into(),
            ..gpt.partitions[0].clone()
        });
        assert!(bad
            .primary_bytes()
            .unwrap_err()
            .to_string()
            .contains("overlaps"));
    }
}
