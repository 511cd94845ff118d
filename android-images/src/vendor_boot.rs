//! `vendor_boot.img` (magic `VNDRBOOT`), header versions 3 and 4, per AOSP's `bootimg.h`:
//! header, vendor ramdisk(s), DTB, then for v4 the vendor ramdisk table and the bootconfig
//! section, each padded to the page size.

use crate::boot::{check_page_size, lay_out, LoadAddresses, Section};
use crate::bytes::{
    expect_magic, len_u32, pad_to, put_cstr, put_u32, put_u64, slice_at, FieldReader,
};
use crate::error::{invalid, Result};

/// Magic at offset 0 of every vendor boot image.
pub const VENDOR_BOOT_MAGIC: &[u8; 8] = b"VNDRBOOT";
/// Size of the vendor `cmdline` field.
pub const VENDOR_CMDLINE_MAX: usize = 2048;
/// Size of one v4 vendor ramdisk table entry.
pub const TABLE_ENTRY_SIZE: u32 = 108;
/// Size of an entry's name field.
const RAMDISK_NAME_SIZE: usize = 32;
/// Number of u32 words in an entry's board id.
const BOARD_ID_WORDS: usize = 16;
/// Cap on table entries: real images have a handful; this bounds work on hostile headers.
const MAX_TABLE_ENTRIES: u32 = 4096;
/// The size AOSP 10's mkbootimg writes into the v3 `header_size` field (the real header is
/// 2112 bytes); accepted and preserved so its images parse and rewrite byte for byte.
const AOSP10_V3_HEADER_SIZE: u32 = 2108;

/// Size of the vendor header of `version`.
pub fn vendor_header_size(version: u32) -> u32 {
    if version == 3 {
        2112
    } else {
        2128
    }
}

/// `ramdisk_type` of a vendor ramdisk table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorRamdiskType {
    /// `VENDOR_RAMDISK_TYPE_NONE`.
    None,
    /// `VENDOR_RAMDISK_TYPE_PLATFORM`: loaded for every boot.
    Platform,
    /// `VENDOR_RAMDISK_TYPE_RECOVERY`: recovery resources.
    Recovery,
    /// `VENDOR_RAMDISK_TYPE_DLKM`: vendor kernel modules.
    Dlkm,
    /// A value this crate does not know, kept as found.
    Other(u32),
}

impl VendorRamdiskType {
    /// The numeric value stored in the table.
    pub fn to_u32(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Platform => 1,
            Self::Recovery => 2,
            Self::Dlkm => 3,
            Self::Other(v) => v,
        }
    }

    /// Decodes the stored value.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Platform,
            2 => Self::Recovery,
            3 => Self::Dlkm,
            v => Self::Other(v),
        }
    }

    /// Parses `none|platform|recovery|dlkm` (for the CLI).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => Self::None,
            "platform" => Self::Platform,
            "recovery" => Self::Recovery,
            "dlkm" => Self::Dlkm,
            other => {
                return Err(invalid(
                    "ramdisk type",
                    other,
                    "expected none, platform, recovery or dlkm",
                ))
            }
        })
    }
}

/// One vendor ramdisk fragment (a v4 table entry and its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorRamdisk {
    /// Entry type.
    pub kind: VendorRamdiskType,
    /// Entry name, up to 32 bytes.
    pub name: String,
    /// Board id words the bootloader may match against.
    pub board_id: [u32; BOARD_ID_WORDS],
    /// Ramdisk bytes (usually a compressed cpio archive).
    pub data: Vec<u8>,
}

impl VendorRamdisk {
    /// A fragment with a zero board id.
    pub fn new(kind: VendorRamdiskType, name: &str, data: Vec<u8>) -> Self {
        Self {
            kind,
            name: name.to_string(),
            board_id: [0; BOARD_ID_WORDS],
            data,
        }
    }
}

/// A whole vendor boot image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorBootImage {
    /// 3 or 4.
    pub header_version: u32,
    /// Page size (power of two).
    pub page_size: u32,
    /// Kernel load address.
    pub kernel_addr: u32,
    /// Ramdisk load address.
    pub ramdisk_addr: u32,
    /// Kernel tags address.
    pub tags_addr: u32,
    /// DTB load address.
    pub dtb_addr: u64,
    /// Vendor kernel command line (precedes the boot image's), up to 2048 bytes.
    pub cmdline: String,
    /// Board name, up to 16 bytes.
    pub board_name: String,
    /// A non-canonical `header_size` found in the image (AOSP 10's 2108), kept for rewriting.
    pub header_size_override: Option<u32>,
    /// Vendor ramdisks; v3 holds at most one (type `None`, no name, zero board id).
    pub ramdisks: Vec<VendorRamdisk>,
    /// Device tree blob.
    pub dtb: Vec<u8>,
    /// Bootconfig section text (v4): parameters appended to the initrd at boot.
    pub bootconfig: Vec<u8>,
}

impl VendorBootImage {
    /// An empty image with mkbootimg's default page size (4096 here, since the header spans
    /// more than 2048 bytes) and load addresses.
    pub fn new(header_version: u32) -> Self {
        let mut img = Self {
            header_version,
            page_size: 4096,
            kernel_addr: 0,
            ramdisk_addr: 0,
            tags_addr: 0,
            dtb_addr: 0,
            cmdline: String::new(),
            board_name: String::new(),
            header_size_override: None,
            ramdisks: Vec::new(),
            dtb: Vec::new(),
            bootconfig: Vec::new(),
        };
        // The defaults cannot overflow.
        let _ = img.apply_load_addresses(&LoadAddresses::default());
        img
    }

    /// Sets the load addresses as mkbootimg does for vendor images (all unconditional).
    pub fn apply_load_addresses(&mut self, a: &LoadAddresses) -> Result<()> {
        self.kernel_addr = a.addr("vendor_boot.kernel_addr", a.kernel_offset)?;
        self.ramdisk_addr = a.addr("vendor_boot.ramdisk_addr", a.ramdisk_offset)?;
        self.tags_addr = a.addr("vendor_boot.tags_addr", a.tags_offset)?;
        self.dtb_addr = u64::from(a.addr("vendor_boot.dtb_addr", a.dtb_offset)?);
        Ok(())
    }

    /// All vendor ramdisks concatenated, in table order (what a bootloader loads).
    pub fn concatenated_ramdisks(&self) -> Vec<u8> {
        self.ramdisks
            .iter()
            .flat_map(|r| r.data.iter().copied())
            .collect()
    }

    fn ramdisk_total(&self) -> u64 {
        self.ramdisks.iter().map(|r| r.data.len() as u64).sum()
    }

    /// Where each section lives and the padded total size.
    pub fn sections(&self) -> Result<(Vec<Section>, u64)> {
        let table = u64::from(TABLE_ENTRY_SIZE) * self.ramdisks.len() as u64;
        let sizes = [
            self.ramdisk_total(),
            self.dtb.len() as u64,
            table,
            self.bootconfig.len() as u64,
        ];
        sections_for(self.header_version, self.page_size, sizes)
    }

    /// Parses a complete vendor boot image, checking every size, offset and table entry.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        expect_magic(buf, VENDOR_BOOT_MAGIC, "vendor boot image")?;
        let mut r = FieldReader::new(buf, 8, "vendor boot image header");
        let version = r.u32()?;
        if !(3..=4).contains(&version) {
            return Err(invalid(
                "vendor_boot.header_version",
                version,
                "supported versions are 3 and 4",
            ));
        }
        let page_size = r.u32()?;
        check_page_size("vendor_boot.page_size", page_size)?;
        let kernel_addr = r.u32()?;
        let ramdisk_addr = r.u32()?;
        let ramdisk_size = r.u32()?;
        let cmdline = r.cstr(VENDOR_CMDLINE_MAX as u64, "vendor_boot.cmdline")?;
        let tags_addr = r.u32()?;
        let board_name = r.cstr(16, "vendor_boot.name")?;
        let hdr_size = r.u32()?;
        let canonical = vendor_header_size(version);
        let legacy = version == 3 && hdr_size == AOSP10_V3_HEADER_SIZE;
        if hdr_size != canonical && !legacy {
            return Err(invalid(
                "vendor_boot.header_size",
                hdr_size,
                format!("header version {version} requires {canonical}"),
            ));
        }
        let dtb_size = r.u32()?;
        let dtb_addr = r.u64()?;
        let (mut table_size, mut entry_num, mut entry_size, mut bootconfig_size) =
            (0, 0, TABLE_ENTRY_SIZE, 0);
        if version == 4 {
            table_size = r.u32()?;
            entry_num = r.u32()?;
            entry_size = r.u32()?;
            bootconfig_size = r.u32()?;
            check_table_shape(table_size, entry_num, entry_size)?;
        }
        let sizes = [ramdisk_size, dtb_size, table_size, bootconfig_size].map(u64::from);
        let (sections, _) = sections_for(version, page_size, sizes)?;
        let section = |i: usize| {
            let s = sections[i];
            slice_at(
                buf,
                &format!("vendor boot image {} section", s.name),
                s.offset,
                s.size,
            )
        };
        let ramdisk_blob = section(0)?;
        let ramdisks = if version == 4 {
            parse_table(section(2)?, entry_num, entry_size, ramdisk_blob)?
        } else if ramdisk_blob.is_empty() {
            Vec::new()
        } else {
            vec![VendorRamdisk::new(
                VendorRamdiskType::None,
                "",
                ramdisk_blob.to_vec(),
            )]
        };
        Ok(Self {
            header_version: version,
            page_size,
            kernel_addr,
            ramdisk_addr,
            tags_addr,
            dtb_addr,
            cmdline,
            board_name,
            header_size_override: (hdr_size != canonical).then_some(hdr_size),
            ramdisks,
            dtb: section(1)?.to_vec(),
            bootconfig: if version == 4 {
                section(3)?.to_vec()
            } else {
                Vec::new()
            },
        })
    }

    fn check_writable(&self) -> Result<()> {
        let v = self.header_version;
        if !(3..=4).contains(&v) {
            return Err(invalid(
                "vendor_boot.header_version",
                v,
                "supported versions are 3 and 4",
            ));
        }
        check_page_size("vendor_boot.page_size", self.page_size)?;
        if self.cmdline.len() > VENDOR_CMDLINE_MAX {
            return Err(invalid(
                "vendor_boot.cmdline",
                self.cmdline.len(),
                "longer than 2048 bytes",
            ));
        }
        if v == 3 {
            if !self.bootconfig.is_empty() {
                return Err(invalid(
                    "vendor_boot.bootconfig",
                    format!("{} bytes", self.bootconfig.len()),
                    "header version 3 has no bootconfig section",
                ));
            }
            let plain = |r: &VendorRamdisk| {
                r.kind == VendorRamdiskType::None
                    && r.name.is_empty()
                    && r.board_id == [0; BOARD_ID_WORDS]
            };
            if self.ramdisks.len() > 1 || !self.ramdisks.iter().all(plain) {
                return Err(invalid("vendor_boot.ramdisks", self.ramdisks.len(), "header version 3 holds one untyped, unnamed ramdisk; use version 4 for a ramdisk table"));
            }
        }
        if let Some(size) = self.header_size_override {
            if !(v == 3 && size == AOSP10_V3_HEADER_SIZE) {
                return Err(invalid(
                    "vendor_boot.header_size",
                    size,
                    "only AOSP 10's 2108 may override a v3 header size",
                ));
            }
        }
        Ok(())
    }

    /// Serializes the image.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check_writable()?;
        let v = self.header_version;
        let ramdisk_size = len_u32(
            usize::try_from(self.ramdisk_total()).unwrap_or(usize::MAX),
            "vendor_boot.vendor_ramdisk_size",
        )?;
        let (sections, total) = self.sections()?;
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        out.extend_from_slice(VENDOR_BOOT_MAGIC);
        for value in [
            v,
            self.page_size,
            self.kernel_addr,
            self.ramdisk_addr,
            ramdisk_size,
        ] {
            put_u32(&mut out, value);
        }
        put_cstr(
            &mut out,
            &self.cmdline,
            VENDOR_CMDLINE_MAX,
            "vendor_boot.cmdline",
        )?;
        put_u32(&mut out, self.tags_addr);
        put_cstr(&mut out, &self.board_name, 16, "vendor_boot.name")?;
        put_u32(
            &mut out,
            self.header_size_override.unwrap_or(vendor_header_size(v)),
        );
        put_u32(&mut out, len_u32(self.dtb.len(), "vendor_boot.dtb_size")?);
        put_u64(&mut out, self.dtb_addr);
        let table = self.table_bytes()?;
        if v == 4 {
            put_u32(
                &mut out,
                len_u32(table.len(), "vendor_boot.vendor_ramdisk_table_size")?,
            );
            put_u32(
                &mut out,
                len_u32(
                    self.ramdisks.len(),
                    "vendor_boot.vendor_ramdisk_table_entry_num",
                )?,
            );
            put_u32(&mut out, TABLE_ENTRY_SIZE);
            put_u32(
                &mut out,
                len_u32(self.bootconfig.len(), "vendor_boot.vendor_bootconfig_size")?,
            );
        }
        let page = self.page_size as usize;
        pad_to(&mut out, page);
        for r in &self.ramdisks {
            out.extend_from_slice(&r.data);
        }
        pad_to(&mut out, page);
        out.extend_from_slice(&self.dtb);
        pad_to(&mut out, page);
        if v == 4 {
            out.extend_from_slice(&table);
            pad_to(&mut out, page);
            out.extend_from_slice(&self.bootconfig);
            pad_to(&mut out, page);
        }
        debug_assert_eq!(out.len() as u64, total, "{sections:?}");
        Ok(out)
    }

    fn table_bytes(&self) -> Result<Vec<u8>> {
        let mut table = Vec::new();
        let mut offset = 0u32;
        for (i, r) in self.ramdisks.iter().enumerate() {
            let size = len_u32(r.data.len(), &format!("vendor_boot.ramdisk[{i}].size"))?;
            put_u32(&mut table, size);
            put_u32(&mut table, offset);
            put_u32(&mut table, r.kind.to_u32());
            put_cstr(
                &mut table,
                &r.name,
                RAMDISK_NAME_SIZE,
                &format!("vendor_boot.ramdisk[{i}].name"),
            )?;
            for word in r.board_id {
                put_u32(&mut table, word);
            }
            offset = offset.checked_add(size).ok_or_else(|| {
                invalid(
                    "vendor_boot.vendor_ramdisk_size",
                    "> 4 GiB",
                    "ramdisks too large",
                )
            })?;
        }
        Ok(table)
    }
}

/// Lays out the four vendor sections (the last two only in v4).
fn sections_for(version: u32, page_size: u32, sizes: [u64; 4]) -> Result<(Vec<Section>, u64)> {
    let names = [
        "vendor_ramdisk",
        "dtb",
        "vendor_ramdisk_table",
        "bootconfig",
    ];
    let count = if version == 4 { 4 } else { 2 };
    let list: Vec<(&'static str, u64)> = names.into_iter().zip(sizes).take(count).collect();
    lay_out(
        u64::from(vendor_header_size(version)),
        page_size,
        &list,
        "vendor_boot",
    )
}

fn check_table_shape(table_size: u32, entry_num: u32, entry_size: u32) -> Result<()> {
    if entry_size < TABLE_ENTRY_SIZE {
        return Err(invalid(
            "vendor_boot.vendor_ramdisk_table_entry_size",
            entry_size,
            format!("must be at least {TABLE_ENTRY_SIZE}"),
        ));
    }
    if entry_num > MAX_TABLE_ENTRIES {
        return Err(invalid(
            "vendor_boot.vendor_ramdisk_table_entry_num",
            entry_num,
            format!("more than {MAX_TABLE_ENTRIES} entries"),
        ));
    }
    if u64::from(entry_num) * u64::from(entry_size) != u64::from(table_size) {
        return Err(invalid(
            "vendor_boot.vendor_ramdisk_table_size",
            table_size,
            format!("must equal entry_num {entry_num} x entry_size {entry_size}"),
        ));
    }
    Ok(())
}

/// Reads the table entries and cuts each fragment out of the ramdisk section; fragments must
/// lie inside it and must not overlap.
fn parse_table(
    table: &[u8],
    entry_num: u32,
    entry_size: u32,
    blob: &[u8],
) -> Result<Vec<VendorRamdisk>> {
    let mut out = Vec::new();
    let mut ranges: Vec<(u64, u64, usize)> = Vec::new();
    for i in 0..entry_num as usize {
        let field = |f: &str| format!("vendor_boot.ramdisk[{i}].{f}");
        let mut r = FieldReader::new(
            table,
            i as u64 * u64::from(entry_size),
            "vendor ramdisk table",
        );
        let size = u64::from(r.u32()?);
        let offset = u64::from(r.u32()?);
        let kind = VendorRamdiskType::from_u32(r.u32()?);
        let name = r.cstr(RAMDISK_NAME_SIZE as u64, &field("name"))?;
        let mut board_id = [0u32; BOARD_ID_WORDS];
        for word in &mut board_id {
            *word = r.u32()?;
        }
        if offset + size > blob.len() as u64 {
            return Err(invalid(
                field("ramdisk_offset"),
                format!("{offset} (size {size})"),
                format!(
                    "past the end of the {}-byte vendor ramdisk section",
                    blob.len()
                ),
            ));
        }
        if let Some((_, _, j)) = ranges
            .iter()
            .find(|(s, e, _)| size > 0 && offset < *e && *s < offset + size)
        {
            return Err(invalid(
                field("ramdisk_offset"),
                offset,
                format!("overlaps vendor ramdisk {j}"),
            ));
        }
        ranges.push((offset, offset + size, i));
        let data = blob[offset as usize..(offset + size) as usize].to_vec();
        out.push(VendorRamdisk {
            kind,
            name,
            board_id,
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
    }

    fn sample_v4() -> VendorBootImage {
        let mut img = VendorBootImage::new(4);
        img.cmdline = "vendor=1".into();
        img.board_name = "cloudphone".into();
        img.ramdisks = vec![
            VendorRamdisk::new(VendorRamdiskType::Platform, "platform", vec![1; 5000]),
            VendorRamdisk {
                board_id: [7; 16],
                ..VendorRamdisk::new(VendorRamdiskType::Dlkm, "dlkm", vec![2; 10])
            },
        ];
        img.dtb = vec![3; 20];
        img.bootconfig = b"androidboot.hardware = \"cloudphone\"\n".to_vec();
        img
    }

    #[test]
    fn v4_layout_matches_bootimg_h() {
        let b = sample_v4().to_bytes().unwrap();
        // vendor_boot_img_hdr_v4: header_version@8 page_size@12 kernel_addr@16 ramdisk_addr@20
        // vendor_ramdisk_size@24 cmdline@28 tags_addr@2076 name@2080 header_size@2096
        // dtb_size@2100 dtb_addr@2104 table_size@2112 entry_num@2116 entry_size@2120 bootconfig_size@2124.
        assert_eq!(&b[..8], b"VNDRBOOT");
        assert_eq!(word(&b, 8), 4);
        assert_eq!(word(&b, 12), 4096);
        assert_eq!(word(&b, 16), 0x1000_8000);
        assert_eq!(word(&b, 20), 0x1100_0000);
        assert_eq!(word(&b, 24), 5010);
        assert_eq!(&b[28..36], b"vendor=1");
        assert_eq!(word(&b, 2076), 0x1000_0100);
        assert_eq!(&b[2080..2090], b"cloudphone");
        assert_eq!(word(&b, 2096), 2128);
        assert_eq!(word(&b, 2100), 20);
        assert_eq!(word(&b, 2112), 216);
        assert_eq!(word(&b, 2116), 2);
        assert_eq!(word(&b, 2120), 108);
        assert_eq!(word(&b, 2124), 36);
        // header 1 page, ramdisks 2 pages, dtb 1, table at page 4, bootconfig at page 5.
        let t = 4 * 4096;
        assert_eq!(
            (word(&b, t), word(&b, t + 4), word(&b, t + 8)),
            (5000, 0, 1)
        );
        assert_eq!(&b[t + 12..t + 20], b"platform");
        assert_eq!(
            (word(&b, t + 108), word(&b, t + 112), word(&b, t + 116)),
            (10, 5000, 3)
        );
        assert_eq!(word(&b, t + 108 + 44), 7);
        assert_eq!(&b[5 * 4096..5 * 4096 + 11], b"androidboot");
        assert_eq!(b.len(), 6 * 4096);
    }

    #[test]
    fn round_trips_v3_and_v4() {
        let v4 = sample_v4();
        assert_eq!(VendorBootImage::parse(&v4.to_bytes().unwrap()).unwrap(), v4);
        let mut v3 = VendorBootImage::new(3);
        v3.ramdisks = vec![VendorRamdisk::new(VendorRamdiskType::None, "", vec![9; 3])];
        v3.dtb = vec![1];
        assert_eq!(VendorBootImage::parse(&v3.to_bytes().unwrap()).unwrap(), v3);
        v3.ramdisks
            .push(VendorRamdisk::new(VendorRamdiskType::None, "", vec![1]));
        assert!(v3
            .to_bytes()
            .unwrap_err()
            .to_string()
            .contains("use version 4"));
    }

    #[test]
    fn hostile_tables_are_rejected() {
        let good = sample_v4().to_bytes().unwrap();
        let err = |b: &[u8]| VendorBootImage::parse(b).unwrap_err().to_string();
        let t = 4 * 4096;
        let mut b = good.clone();
        b[t + 4..t + 8].copy_from_slice(&4000u32.to_le_bytes());
        assert!(
            err(&b).contains("ramdisk[0].ramdisk_offset = 4000"),
            "{}",
            err(&b)
        );
        let mut b = good.clone();
        b[t + 112..t + 116].copy_from_slice(&100u32.to_le_bytes());
        assert!(err(&b).contains("overlaps vendor ramdisk 0"));
        let mut b = good.clone();
        b[2116..2120].copy_from_slice(&3u32.to_le_bytes());
        assert!(err(&b).contains("vendor_ramdisk_table_size = 216"));
        let mut b = good.clone();
        b[2116..2120].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&b).contains("entry_num"));
        let mut b = good.clone();
        b[12..16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(err(&b).contains("vendor_boot.page_size = 1000"));
        assert!(err(&good[..5000]).contains("truncated"));
    }
}
