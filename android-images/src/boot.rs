//! `boot.img` (magic `ANDROID!`), header versions 0 to 4, parsed and written per AOSP's
//! `bootimg.h`: a header page, then kernel, ramdisk, second stage, recovery DTBO (v1, v2),
//! DTB (v2) and boot signature (v4), each padded to the page size.

use sha1::{Digest, Sha1};

use crate::bytes::{
    align_up, decode_cstr, expect_magic, len_u32, pad_to, put_cstr, put_u32, put_u64, slice_at,
    FieldReader,
};
use crate::error::{invalid, Result};
use crate::os_version::OsVersion;

/// Magic at offset 0 of every boot image.
pub const BOOT_MAGIC: &[u8; 8] = b"ANDROID!";
/// Size of the `cmdline` field of v0-v2 headers.
const CMDLINE_V0: usize = 512;
/// Size of the `extra_cmdline` field of v0-v2 headers.
const EXTRA_CMDLINE_V0: usize = 1024;
/// Size of the single `cmdline` field of v3/v4 headers (= 512 + 1024).
pub const CMDLINE_MAX: usize = 1536;
/// Header versions 3 and 4 fix the page size.
pub const V3_PAGE_SIZE: u32 = 4096;
/// The page sizes a v0-v2 header may declare: powers of two in this range (mkbootimg
/// offers 2048..=16384; larger values only waste space but are still accepted).
const PAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 2048..=65536;
/// Payload names in image order (the v4 boot signature last).
pub const SECTION_NAMES: [&str; 6] = [
    "kernel",
    "ramdisk",
    "second",
    "recovery_dtbo",
    "dtb",
    "signature",
];

/// Size in bytes of the header of `version` (what the `header_size` field should hold).
pub fn header_size(version: u32) -> u32 {
    match version {
        0 => 1632,
        1 => 1648,
        2 => 1660,
        3 => 1580,
        _ => 1584,
    }
}

/// Validates a page size field (power of two within [`PAGE_SIZE_RANGE`]).
pub fn check_page_size(field: &str, page_size: u32) -> Result<()> {
    if !page_size.is_power_of_two() || !PAGE_SIZE_RANGE.contains(&page_size) {
        return Err(invalid(
            field,
            page_size,
            "must be a power of two within 2048..=65536",
        ));
    }
    Ok(())
}

/// Physical load addresses as mkbootimg derives them from a base and per-payload offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadAddresses {
    /// `--base`.
    pub base: u32,
    /// `--kernel_offset`.
    pub kernel_offset: u32,
    /// `--ramdisk_offset`.
    pub ramdisk_offset: u32,
    /// `--second_offset`.
    pub second_offset: u32,
    /// `--tags_offset`.
    pub tags_offset: u32,
    /// `--dtb_offset`.
    pub dtb_offset: u32,
}

impl Default for LoadAddresses {
    /// mkbootimg's defaults, so images built without options match its output.
    fn default() -> Self {
        Self {
            base: 0x1000_0000,
            kernel_offset: 0x0000_8000,
            ramdisk_offset: 0x0100_0000,
            second_offset: 0x00f0_0000,
            tags_offset: 0x0000_0100,
            dtb_offset: 0x01f0_0000,
        }
    }
}

impl LoadAddresses {
    /// `base + offset`, failing (with the field named) where mkbootimg's 32-bit pack would.
    pub fn addr(&self, field: &str, offset: u32) -> Result<u32> {
        self.base.checked_add(offset).ok_or_else(|| {
            invalid(
                field,
                format!("{:#x} + {offset:#x}", self.base),
                "overflows 32 bits",
            )
        })
    }
}

/// A whole boot image: header fields plus payloads.
///
/// Fields a header version does not store must be left empty/zero; the writer refuses them
/// rather than dropping data silently.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootImage {
    /// 0..=4.
    pub header_version: u32,
    /// Page size (fixed at 4096 for v3/v4).
    pub page_size: u32,
    /// Kernel load address (v0-v2).
    pub kernel_addr: u32,
    /// Ramdisk load address (v0-v2).
    pub ramdisk_addr: u32,
    /// Second stage load address (v0-v2).
    pub second_addr: u32,
    /// Kernel tags address (v0-v2).
    pub tags_addr: u32,
    /// DTB load address (v2).
    pub dtb_addr: u64,
    /// Packed OS version and patch level.
    pub os_version: OsVersion,
    /// Board name, up to 16 bytes (v0-v2).
    pub board_name: String,
    /// Kernel command line (`cmdline` + `extra_cmdline` for v0-v2), up to 1536 bytes.
    pub cmdline: String,
    /// The `id` digest (v0-v2); `None` makes the writer compute mkbootimg's SHA-1.
    pub id: Option<[u8; 32]>,
    /// A v3/v4 `header_size` value other than the canonical one, kept so an image parses and
    /// rewrites byte for byte (AOSP 10's mkbootimg writes 1596 instead of 1580).
    pub header_size_override: Option<u32>,
    /// Kernel image.
    pub kernel: Vec<u8>,
    /// Ramdisk (the generic ramdisk for v3/v4).
    pub ramdisk: Vec<u8>,
    /// Second stage bootloader (v0-v2).
    pub second: Vec<u8>,
    /// Recovery DTBO/ACPIO (v1, v2).
    pub recovery_dtbo: Vec<u8>,
    /// Device tree blob (v2).
    pub dtb: Vec<u8>,
    /// Boot signature (v4).
    pub signature: Vec<u8>,
}

/// One payload's place in an image, for `inspect` and for the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Payload name (one of [`SECTION_NAMES`]).
    pub name: &'static str,
    /// Byte offset in the image.
    pub offset: u64,
    /// Payload size in bytes.
    pub size: u64,
}

/// Offsets of consecutive page-aligned payloads following a header of `header_len` bytes.
pub fn lay_out(
    header_len: u64,
    page_size: u32,
    sizes: &[(&'static str, u64)],
    field_prefix: &str,
) -> Result<(Vec<Section>, u64)> {
    if !page_size.is_power_of_two() {
        return Err(invalid(
            format!("{field_prefix}.page_size"),
            page_size,
            "must be a power of two",
        ));
    }
    let page = u64::from(page_size);
    let mut offset = align_up(header_len, page, field_prefix)?;
    let mut sections = Vec::with_capacity(sizes.len());
    for &(name, size) in sizes {
        sections.push(Section { name, offset, size });
        let end = offset.checked_add(size).ok_or_else(|| {
            invalid(
                format!("{field_prefix}.{name}_size"),
                size,
                "overflows the image",
            )
        })?;
        offset = align_up(end, page, &format!("{field_prefix}.{name}_size"))?;
    }
    Ok((sections, offset))
}

impl BootImage {
    /// An empty image of `header_version` with mkbootimg's default page size and addresses.
    pub fn new(header_version: u32) -> Self {
        let mut img = Self {
            header_version,
            ..Self::default()
        };
        if header_version >= 3 {
            img.page_size = V3_PAGE_SIZE;
        } else {
            img.page_size = 2048;
        }
        img
    }

    /// Sets the load addresses the way mkbootimg does (call after setting payloads: an absent
    /// ramdisk or second stage gets address 0). Only v0-v2 headers store addresses.
    pub fn apply_load_addresses(&mut self, a: &LoadAddresses) -> Result<()> {
        if self.header_version >= 3 {
            return Ok(());
        }
        self.kernel_addr = a.addr("kernel_addr", a.kernel_offset)?;
        self.ramdisk_addr = if self.ramdisk.is_empty() {
            0
        } else {
            a.addr("ramdisk_addr", a.ramdisk_offset)?
        };
        self.second_addr = if self.second.is_empty() {
            0
        } else {
            a.addr("second_addr", a.second_offset)?
        };
        self.tags_addr = a.addr("tags_addr", a.tags_offset)?;
        self.dtb_addr = if self.header_version == 2 {
            u64::from(a.addr("dtb_addr", a.dtb_offset)?)
        } else {
            0
        };
        Ok(())
    }

    fn payloads(&self) -> [&Vec<u8>; 6] {
        [
            &self.kernel,
            &self.ramdisk,
            &self.second,
            &self.recovery_dtbo,
            &self.dtb,
            &self.signature,
        ]
    }

    fn payloads_mut(&mut self) -> [&mut Vec<u8>; 6] {
        [
            &mut self.kernel,
            &mut self.ramdisk,
            &mut self.second,
            &mut self.recovery_dtbo,
            &mut self.dtb,
            &mut self.signature,
        ]
    }

    /// Where each stored payload lives in the image and the padded total size.
    pub fn sections(&self) -> Result<(Vec<Section>, u64)> {
        let sizes = self.payloads().map(|p| p.len() as u64);
        sections_for(self.header_version, self.page_size, sizes)
    }

    /// Parses a complete boot image, checking every size and offset against the input.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        expect_magic(buf, BOOT_MAGIC, "boot image")?;
        let version = FieldReader::new(buf, 40, "boot image header").u32()?;
        let (mut img, sizes) = match version {
            0..=2 => Self::parse_header_v0(buf, version)?,
            3 | 4 => Self::parse_header_v3(buf, version)?,
            v => {
                return Err(invalid(
                    "boot.header_version",
                    v,
                    "supported versions are 0..=4",
                ))
            }
        };
        let (sections, _) = sections_for(version, img.page_size, sizes)?;
        for section in sections {
            let what = format!("boot image {} section", section.name);
            let data = slice_at(buf, &what, section.offset, section.size)?.to_vec();
            let index = SECTION_NAMES
                .iter()
                .position(|n| *n == section.name)
                .unwrap_or(0);
            *img.payloads_mut()[index] = data;
        }
        Ok(img)
    }

    /// Parses a v0-v2 header; returns the image without payloads and the declared sizes.
    fn parse_header_v0(buf: &[u8], version: u32) -> Result<(Self, [u64; 6])> {
        let mut r = FieldReader::new(buf, 8, "boot image header");
        let mut img = Self {
            header_version: version,
            ..Self::default()
        };
        let kernel_size = r.u32()?;
        img.kernel_addr = r.u32()?;
        let ramdisk_size = r.u32()?;
        img.ramdisk_addr = r.u32()?;
        let second_size = r.u32()?;
        img.second_addr = r.u32()?;
        img.tags_addr = r.u32()?;
        img.page_size = r.u32()?;
        check_page_size("boot.page_size", img.page_size)?;
        r.u32()?; // header_version, read by the caller
        img.os_version = OsVersion(r.u32()?);
        img.board_name = r.cstr(16, "boot.name")?;
        let cmdline = r.bytes(CMDLINE_V0 as u64)?;
        img.id = Some(r.array()?);
        let extra = r.bytes(EXTRA_CMDLINE_V0 as u64)?;
        img.cmdline = join_cmdline(cmdline, extra)?;
        let mut sizes = [kernel_size, ramdisk_size, second_size, 0, 0, 0].map(u64::from);
        if version == 0 {
            return Ok((img, sizes));
        }
        sizes[3] = u64::from(r.u32()?);
        let dtbo_offset = r.u64()?;
        let hdr_size = r.u32()?;
        if hdr_size != header_size(version) {
            return Err(invalid(
                "boot.header_size",
                hdr_size,
                format!("header version {version} requires {}", header_size(version)),
            ));
        }
        if version == 2 {
            sizes[4] = u64::from(r.u32()?);
            img.dtb_addr = r.u64()?;
        }
        let (sections, _) = sections_for(version, img.page_size, sizes)?;
        let expected = if sizes[3] == 0 { 0 } else { sections[3].offset };
        if dtbo_offset != expected {
            return Err(invalid(
                "boot.recovery_dtbo_offset",
                dtbo_offset,
                format!("expected {expected}: sections are consecutive and page aligned"),
            ));
        }
        Ok((img, sizes))
    }

    /// Parses a v3/v4 header; returns the image without payloads and the declared sizes.
    fn parse_header_v3(buf: &[u8], version: u32) -> Result<(Self, [u64; 6])> {
        let mut r = FieldReader::new(buf, 8, "boot image header");
        let mut img = Self {
            header_version: version,
            page_size: V3_PAGE_SIZE,
            ..Self::default()
        };
        let kernel_size = r.u32()?;
        let ramdisk_size = r.u32()?;
        img.os_version = OsVersion(r.u32()?);
        let hdr_size = r.u32()?;
        let canonical = header_size(version);
        if !(canonical..=V3_PAGE_SIZE).contains(&hdr_size) {
            return Err(invalid(
                "boot.header_size",
                hdr_size,
                format!("header version {version} needs {canonical}..={V3_PAGE_SIZE}"),
            ));
        }
        img.header_size_override = (hdr_size != canonical).then_some(hdr_size);
        let reserved = r.bytes(16)?;
        if reserved.iter().any(|&b| b != 0) {
            return Err(invalid(
                "boot.reserved",
                crate::bytes::escape(reserved),
                "must be zero",
            ));
        }
        r.u32()?; // header_version, read by the caller
        img.cmdline = r.cstr(CMDLINE_MAX as u64, "boot.cmdline")?;
        let signature_size = if version == 4 { r.u32()? } else { 0 };
        Ok((
            img,
            [kernel_size, ramdisk_size, 0, 0, 0, signature_size].map(u64::from),
        ))
    }

    /// Checks that every field this header version does not store is empty, so writing never
    /// drops data silently.
    fn check_unstored(&self) -> Result<()> {
        let v = self.header_version;
        let stored = stored_sections(v);
        for ((name, data), keep) in SECTION_NAMES.iter().zip(self.payloads()).zip(stored) {
            if !keep && !data.is_empty() {
                return Err(invalid(
                    format!("boot.{name}"),
                    format!("{} bytes", data.len()),
                    format!("header version {v} has no {name} section"),
                ));
            }
        }
        let v3_only = [
            ("kernel_addr", u64::from(self.kernel_addr)),
            ("ramdisk_addr", u64::from(self.ramdisk_addr)),
            ("second_addr", u64::from(self.second_addr)),
            ("tags_addr", u64::from(self.tags_addr)),
        ];
        if v >= 3 {
            for (field, value) in v3_only {
                if value != 0 {
                    return Err(invalid(
                        format!("boot.{field}"),
                        value,
                        format!("header version {v} stores no addresses"),
                    ));
                }
            }
            if !self.board_name.is_empty() {
                return Err(invalid(
                    "boot.name",
                    &self.board_name,
                    format!("header version {v} stores no board name"),
                ));
            }
            if self.id.is_some() {
                return Err(invalid(
                    "boot.id",
                    "set",
                    format!("header version {v} stores no id"),
                ));
            }
        }
        if v != 2 && self.dtb_addr != 0 {
            return Err(invalid(
                "boot.dtb_addr",
                self.dtb_addr,
                format!("header version {v} stores no dtb address"),
            ));
        }
        if v < 3 && self.header_size_override.is_some() {
            return Err(invalid(
                "boot.header_size",
                "override",
                "only v3/v4 headers allow a non-canonical size",
            ));
        }
        Ok(())
    }

    /// The `id` mkbootimg computes: SHA-1 over each stored payload followed by its 32-bit size.
    pub fn mkbootimg_id(&self) -> [u8; 32] {
        let mut sha = Sha1::new();
        let count = match self.header_version {
            0 => 3,
            1 => 4,
            _ => 5,
        };
        for data in &self.payloads()[..count] {
            sha.update(data);
            sha.update((data.len() as u32).to_le_bytes());
        }
        let mut id = [0u8; 32];
        id[..20].copy_from_slice(&sha.finalize());
        id
    }

    /// Serializes the image: header padded to a page, then each payload padded to a page.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let v = self.header_version;
        if v > 4 {
            return Err(invalid(
                "boot.header_version",
                v,
                "supported versions are 0..=4",
            ));
        }
        if v >= 3 && self.page_size != V3_PAGE_SIZE {
            return Err(invalid(
                "boot.page_size",
                self.page_size,
                "header versions 3 and 4 use 4096",
            ));
        }
        check_page_size("boot.page_size", self.page_size)?;
        self.check_unstored()?;
        if self.cmdline.len() > CMDLINE_MAX {
            return Err(invalid(
                "boot.cmdline",
                self.cmdline.len(),
                format!("longer than {CMDLINE_MAX} bytes"),
            ));
        }
        let sizes: Vec<u32> = SECTION_NAMES
            .iter()
            .zip(self.payloads())
            .map(|(name, p)| len_u32(p.len(), &format!("boot.{name}_size")))
            .collect::<Result<_>>()?;
        let (sections, total) = self.sections()?;
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        out.extend_from_slice(BOOT_MAGIC);
        if v < 3 {
            self.write_header_v0(&mut out, &sizes, &sections)?;
        } else {
            self.write_header_v3(&mut out, &sizes)?;
        }
        for section in &sections {
            pad_to(&mut out, self.page_size as usize);
            let index = SECTION_NAMES
                .iter()
                .position(|n| *n == section.name)
                .unwrap_or(0);
            out.extend_from_slice(self.payloads()[index]);
        }
        pad_to(&mut out, self.page_size as usize);
        Ok(out)
    }

    fn write_header_v0(
        &self,
        out: &mut Vec<u8>,
        sizes: &[u32],
        sections: &[Section],
    ) -> Result<()> {
        let v = self.header_version;
        for value in [
            sizes[0],
            self.kernel_addr,
            sizes[1],
            self.ramdisk_addr,
            sizes[2],
            self.second_addr,
            self.tags_addr,
            self.page_size,
            v,
            self.os_version.0,
        ] {
            put_u32(out, value);
        }
        put_cstr(out, &self.board_name, 16, "boot.name")?;
        let cmdline = self.cmdline.as_bytes();
        let split = cmdline.len().min(CMDLINE_V0);
        out.extend_from_slice(&cmdline[..split]);
        out.resize(out.len() + CMDLINE_V0 - split, 0);
        out.extend_from_slice(&self.id.unwrap_or_else(|| self.mkbootimg_id()));
        out.extend_from_slice(&cmdline[split..]);
        out.resize(out.len() + EXTRA_CMDLINE_V0 - (cmdline.len() - split), 0);
        if v >= 1 {
            put_u32(out, sizes[3]);
            put_u64(out, if sizes[3] == 0 { 0 } else { sections[3].offset });
            put_u32(out, header_size(v));
        }
        if v == 2 {
            put_u32(out, sizes[4]);
            put_u64(out, self.dtb_addr);
        }
        Ok(())
    }

    fn write_header_v3(&self, out: &mut Vec<u8>, sizes: &[u32]) -> Result<()> {
        let v = self.header_version;
        put_u32(out, sizes[0]);
        put_u32(out, sizes[1]);
        put_u32(out, self.os_version.0);
        put_u32(out, self.header_size_override.unwrap_or(header_size(v)));
        out.resize(out.len() + 16, 0);
        put_u32(out, v);
        put_cstr(out, &self.cmdline, CMDLINE_MAX, "boot.cmdline")?;
        if v == 4 {
            put_u32(out, sizes[5]);
        }
        Ok(())
    }
}

/// Which payloads `version` stores, in [`SECTION_NAMES`] order.
fn stored_sections(version: u32) -> [bool; 6] {
    match version {
        0 => [true, true, true, false, false, false],
        1 => [true, true, true, true, false, false],
        2 => [true, true, true, true, true, false],
        3 => [true, true, false, false, false, false],
        _ => [true, true, false, false, false, true],
    }
}

/// Lays out the payloads a `version` header stores, given their sizes in
/// [`SECTION_NAMES`] order.
fn sections_for(version: u32, page_size: u32, sizes: [u64; 6]) -> Result<(Vec<Section>, u64)> {
    let stored: Vec<(&'static str, u64)> = SECTION_NAMES
        .iter()
        .zip(sizes)
        .zip(stored_sections(version))
        .filter(|(_, keep)| *keep)
        .map(|((name, size), _)| (*name, size))
        .collect();
    lay_out(u64::from(header_size(version)), page_size, &stored, "boot")
}

/// Joins the v0-v2 `cmdline` and `extra_cmdline` fields (each NUL-terminated unless full).
fn join_cmdline(cmdline: &[u8], extra: &[u8]) -> Result<String> {
    let cut = |b: &[u8]| b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let mut joined = cmdline[..cut(cmdline)].to_vec();
    joined.extend_from_slice(&extra[..cut(extra)]);
    decode_cstr(&joined, "boot.cmdline")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().unwrap())
    }

    fn sample(version: u32) -> BootImage {
        let mut img = BootImage::new(version);
        img.kernel = vec![0x11; 5000];
        img.ramdisk = vec![0x22; 100];
        img.cmdline = "console=hvc0".into();
        img.os_version = OsVersion::parse("13.0.0", "2024-03").unwrap();
        if version < 3 {
            img.second = vec![0x33; 10];
            img.board_name = "cloudphone".into();
        }
        if (1..3).contains(&version) {
            img.recovery_dtbo = vec![0x44; 3000];
        }
        if version == 2 {
            img.dtb = vec![0x55; 7];
        }
        if version == 4 {
            img.signature = vec![0x66; 4096];
        }
        img.apply_load_addresses(&LoadAddresses::default()).unwrap();
        img
    }

    #[test]
    fn v2_field_offsets_match_bootimg_h() {
        let img = sample(2);
        let b = img.to_bytes().unwrap();
        // bootimg.h boot_img_hdr_v2: kernel_size@8 kernel_addr@12 ramdisk_size@16 ... page_size@36
        // header_version@40 os_version@44 name@48 cmdline@64 id@576 extra_cmdline@608
        // recovery_dtbo_size@1632 recovery_dtbo_offset@1636 header_size@1644 dtb_size@1648 dtb_addr@1652.
        assert_eq!(&b[..8], b"ANDROID!");
        assert_eq!(word(&b, 8), 5000);
        assert_eq!(word(&b, 12), 0x1000_8000);
        assert_eq!(word(&b, 16), 100);
        assert_eq!(word(&b, 20), 0x1100_0000);
        assert_eq!(word(&b, 24), 10);
        assert_eq!(word(&b, 28), 0x10f0_0000);
        assert_eq!(word(&b, 32), 0x1000_0100);
        assert_eq!(word(&b, 36), 2048);
        assert_eq!(word(&b, 40), 2);
        assert_eq!(&b[48..58], b"cloudphone");
        assert_eq!(&b[64..76], b"console=hvc0");
        assert_eq!(word(&b, 1632), 3000);
        // header page + kernel 3 pages + ramdisk 1 + second 1 = 6 pages of 2048.
        assert_eq!(
            u64::from_le_bytes(b[1636..1644].try_into().unwrap()),
            6 * 2048
        );
        assert_eq!(word(&b, 1644), 1660);
        assert_eq!(word(&b, 1648), 7);
        assert_eq!(
            u64::from_le_bytes(b[1652..1660].try_into().unwrap()),
            0x11f0_0000
        );
        // dtbo 2 pages then dtb 1 page.
        assert_eq!(b.len(), (6 + 2 + 1) * 2048);
        assert_eq!(&b[8 * 2048..8 * 2048 + 7], &[0x55; 7]);
    }

    #[test]
    fn v4_field_offsets_match_bootimg_h() {
        let b = sample(4).to_bytes().unwrap();
        // boot_img_hdr_v4: kernel_size@8 ramdisk_size@12 os_version@16 header_size@20
        // reserved@24..40 header_version@40 cmdline@44 signature_size@1580.
        assert_eq!(word(&b, 8), 5000);
        assert_eq!(word(&b, 12), 100);
        assert_eq!(word(&b, 16), (13 << 14) << 11 | (24 << 4 | 3));
        assert_eq!(word(&b, 20), 1584);
        assert_eq!(word(&b, 40), 4);
        assert_eq!(&b[44..56], b"console=hvc0");
        assert_eq!(word(&b, 1580), 4096);
        // header page, kernel 2 pages, ramdisk 1, signature 1.
        assert_eq!(b.len(), 5 * 4096);
        assert_eq!(b[4 * 4096], 0x66);
    }

    #[test]
    fn round_trip_every_version() {
        for v in 0..=4 {
            let img = sample(v);
            let bytes = img.to_bytes().unwrap();
            let mut parsed = BootImage::parse(&bytes).unwrap();
            if v < 3 {
                assert_eq!(parsed.id, Some(img.mkbootimg_id()));
                parsed.id = None;
            }
            assert_eq!(parsed, img, "version {v}");
        }
    }

    #[test]
    fn long_cmdline_spans_extra_cmdline() {
        let mut img = sample(0);
        img.cmdline = "x".repeat(1536);
        let b = img.to_bytes().unwrap();
        assert_eq!(b[64 + 511], b'x');
        assert_eq!(b[608], b'x');
        assert_eq!(BootImage::parse(&b).unwrap().cmdline.len(), 1536);
        img.cmdline.push('y');
        assert!(img
            .to_bytes()
            .unwrap_err()
            .to_string()
            .contains("boot.cmdline = 1537"));
    }

    #[test]
    fn writer_refuses_fields_the_version_lacks() {
        let mut img = sample(3);
        img.second = vec![1];
        assert!(img
            .to_bytes()
            .unwrap_err()
            .to_string()
            .contains("boot.second = 1 bytes"));
        let mut img = sample(0);
        img.dtb = vec![1];
        assert!(img.to_bytes().is_err());
        let mut img = sample(3);
        img.page_size = 2048;
        assert!(img
            .to_bytes()
            .unwrap_err()
            .to_string()
            .contains("boot.page_size = 2048"));
    }

    #[test]
    fn parser_rejects_bad_input_with_field_names() {
        let good = sample(2).to_bytes().unwrap();
        let err = |b: &[u8]| BootImage::parse(b).unwrap_err().to_string();
        assert!(err(b"NOTANDROID").contains("bad magic"));
        assert!(err(&good[..100]).contains("truncated"));
        let mut b = good.clone();
        b[36..40].copy_from_slice(&3000u32.to_le_bytes());
        assert!(err(&b).contains("boot.page_size = 3000"));
        let mut b = good.clone();
        b[40..44].copy_from_slice(&9u32.to_le_bytes());
        assert!(err(&b).contains("boot.header_version = 9"));
        let mut b = good.clone();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&b).contains("recovery_dtbo_offset"), "{}", err(&b));
        let mut b = sample(0).to_bytes().unwrap();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(err(&b).contains("kernel section: truncated"), "{}", err(&b));
        let mut b = good.clone();
        b[1636..1644].copy_from_slice(&2048u64.to_le_bytes());
        assert!(err(&b).contains("boot.recovery_dtbo_offset = 2048"));
        let mut b = good.clone();
        b[1644..1648].copy_from_slice(&1000u32.to_le_bytes());
        assert!(err(&b).contains("boot.header_size = 1000"));
        let trunc = &good[..good.len() - 2048];
        assert!(err(trunc).contains("dtb section"));
    }
}
