//! `inspect` (format detection + field dump) and `unpack`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use android_images::boot::BOOT_MAGIC;
use android_images::bootconfig::{split_trailer, BOOTCONFIG_MAGIC};
use android_images::composite::{CompositeDisk, COMPOSITE_MAGIC, MAX_SPEC_LEN};
use android_images::gpt::Gpt;
use android_images::loader::{read_capped, DEFAULT_MAX_IMAGE_SIZE};
use android_images::qcow2::{parse_header, QCOW2_MAGIC};
use android_images::sparse::{is_sparse, unsparse};
use android_images::vendor_boot::VENDOR_BOOT_MAGIC;
use android_images::{BootImage, VendorBootImage};
use anyhow::{bail, Context, Result};

/// The formats `inspect` recognises.
enum Format {
    Boot,
    VendorBoot,
    Sparse,
    Composite,
    Qcow2,
    Gpt,
    Bootconfig,
}

fn detect(path: &Path) -> Result<Format> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = [0u8; 1024];
    let n = read_up_to(&mut f, &mut head)?;
    let head = &head[..n];
    let len = f.metadata()?.len();
    let mut tail = [0u8; 12];
    let has_tail = len >= 12 && {
        f.seek(SeekFrom::End(-12))?;
        f.read_exact(&mut tail).is_ok()
    };
    Ok(if head.starts_with(BOOT_MAGIC) {
        Format::Boot
    } else if head.starts_with(VENDOR_BOOT_MAGIC) {
        Format::VendorBoot
    } else if is_sparse(head) {
        Format::Sparse
    } else if head.starts_with(COMPOSITE_MAGIC) {
        Format::Composite
    } else if head.starts_with(QCOW2_MAGIC) {
        Format::Qcow2
    } else if head.len() >= 520 && &head[512..520] == b"EFI PART" {
        Format::Gpt
    } else if has_tail && &tail == BOOTCONFIG_MAGIC {
        Format::Bootconfig
    } else {
        bail!("{}: unrecognised format (not boot, vendor_boot, sparse, composite, qcow2, GPT or initrd+bootconfig)", path.display())
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = f.read(&mut buf[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}

/// A writer that only counts, so sparse images can be validated without expanding them.
struct NullSeek(u64);

impl Write for NullSeek {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for NullSeek {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        if let SeekFrom::Current(d) = pos {
            self.0 = self.0.saturating_add_signed(d);
        }
        Ok(self.0)
    }
}

/// Prints every field of a detected image.
pub fn inspect(path: &Path) -> Result<()> {
    match detect(path)? {
        Format::Boot => print_boot(&BootImage::parse(&read_capped(
            path,
            DEFAULT_MAX_IMAGE_SIZE,
        )?)?)?,
        Format::VendorBoot => print_vendor(&VendorBootImage::parse(&read_capped(
            path,
            DEFAULT_MAX_IMAGE_SIZE,
        )?)?)?,
        Format::Sparse => {
            let mut f = File::open(path)?;
            let (h, chunks) = unsparse(&mut f, &mut NullSeek(0), u64::MAX)?;
            println!("format: android sparse image");
            println!(
                "block size: {}\ntotal blocks: {} ({} bytes expanded)\nchunks: {}",
                h.block_size,
                h.total_blocks,
                h.expanded_len(),
                h.total_chunks
            );
            for c in chunks {
                println!(
                    "  block {:>10} +{:<8} {:?}",
                    c.start_block, c.blocks, c.kind
                );
            }
        }
        Format::Composite => {
            let spec = CompositeDisk::parse(&read_capped(path, MAX_SPEC_LEN)?)?;
            println!(
                "format: crosvm composite disk\nversion: {}\nlength: {}",
                spec.version, spec.length
            );
            for c in &spec.components {
                println!(
                    "  {:>12} {} {}",
                    c.offset,
                    if c.writable { "rw" } else { "ro" },
                    c.file_path
                );
            }
            spec.check_files(path.parent().unwrap_or(Path::new(".")))?;
            println!("all component files present and non-overlapping");
        }
        Format::Qcow2 => {
            let mut head = vec![0u8; 4096];
            let n = read_up_to(&mut File::open(path)?, &mut head)?;
            let info = parse_header(&head[..n])?;
            println!(
                "format: qcow2 v{}\nsize: {}\ncluster size: {}\nbacking file: {}",
                info.version,
                info.size,
                info.cluster_size,
                info.backing_file.as_deref().unwrap_or("-")
            );
        }
        Format::Gpt => {
            let mut f = File::open(path)?;
            let len = f.metadata()?.len();
            let gpt = Gpt::read(&mut f, len)?;
            println!(
                "format: GPT disk\ndisk guid: {}\nsectors: {}",
                gpt.disk_guid, gpt.disk_sectors
            );
            for (i, p) in gpt.partitions.iter().enumerate() {
                println!(
                    "  {:>3} {:<16} lba {:>10}..={:<10} {:>12} bytes  {}",
                    i + 1,
                    p.name,
                    p.first_lba,
                    p.last_lba,
                    p.size(),
                    p.unique_guid
                );
            }
        }
        Format::Bootconfig => {
            let buf = read_capped(path, DEFAULT_MAX_IMAGE_SIZE)?;
            let (initrd, data) = split_trailer(&buf)?.context("bootconfig trailer vanished")?;
            println!("format: initrd with bootconfig\ninitrd: {} bytes\nbootconfig: {} bytes (checksum ok)", initrd.len(), data.len());
            print!("{}", String::from_utf8_lossy(data).trim_end_matches('\0'));
        }
    }
    Ok(())
}

fn print_boot(img: &BootImage) -> Result<()> {
    println!("format: boot image v{}", img.header_version);
    println!("page size: {}", img.page_size);
    println!("os version: {}", img.os_version);
    if img.header_version < 3 {
        println!("board: {}", img.board_name);
        println!(
            "kernel addr: {:#x}, ramdisk addr: {:#x}, second addr: {:#x}, tags addr: {:#x}",
            img.kernel_addr, img.ramdisk_addr, img.second_addr, img.tags_addr
        );
        if img.header_version == 2 {
            println!("dtb addr: {:#x}", img.dtb_addr);
        }
        println!(
            "id: {}",
            img.id
                .unwrap_or_default()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
    }
    if let Some(size) = img.header_size_override {
        println!("header size field: {size} (non-canonical)");
    }
    println!("cmdline: {}", img.cmdline);
    let (sections, total) = img.sections()?;
    for s in sections {
        println!(
            "  {:<14} offset {:>10} size {:>10}",
            s.name, s.offset, s.size
        );
    }
    println!("image size: {total}");
    Ok(())
}

fn print_vendor(img: &VendorBootImage) -> Result<()> {
    println!("format: vendor boot image v{}", img.header_version);
    println!("page size: {}\nboard: {}", img.page_size, img.board_name);
    println!(
        "kernel addr: {:#x}, ramdisk addr: {:#x}, tags addr: {:#x}, dtb addr: {:#x}",
        img.kernel_addr, img.ramdisk_addr, img.tags_addr, img.dtb_addr
    );
    println!("cmdline: {}", img.cmdline);
    for (i, r) in img.ramdisks.iter().enumerate() {
        println!(
            "  ramdisk[{i}] {:?} name {:?} {} bytes board id {:x?}",
            r.kind,
            r.name,
            r.data.len(),
            &r.board_id[..4]
        );
    }
    println!("dtb: {} bytes", img.dtb.len());
    if !img.bootconfig.is_empty() {
        print!("bootconfig:\n{}", String::from_utf8_lossy(&img.bootconfig));
    }
    Ok(())
}

fn put(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let path = dir.join(name);
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    println!("{} ({} bytes)", path.display(), data.len());
    Ok(())
}

/// Writes each payload of a boot or vendor_boot image to `out`.
pub fn unpack(path: &Path, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    match detect(path)? {
        Format::Boot => {
            let img = BootImage::parse(&read_capped(path, DEFAULT_MAX_IMAGE_SIZE)?)?;
            for (name, data) in [
                ("kernel", &img.kernel),
                ("ramdisk", &img.ramdisk),
                ("second", &img.second),
                ("recovery_dtbo", &img.recovery_dtbo),
                ("dtb", &img.dtb),
                ("signature", &img.signature),
            ] {
                put(out, name, data)?;
            }
            put(out, "cmdline", img.cmdline.as_bytes())
        }
        Format::VendorBoot => {
            let img = VendorBootImage::parse(&read_capped(path, DEFAULT_MAX_IMAGE_SIZE)?)?;
            for (i, r) in img.ramdisks.iter().enumerate() {
                let name = if r.name.is_empty() {
                    format!("vendor_ramdisk{i:02}")
                } else {
                    format!("vendor_ramdisk{i:02}_{}", r.name)
                };
                put(out, &name, &r.data)?;
            }
            put(out, "dtb", &img.dtb)?;
            put(out, "bootconfig", &img.bootconfig)?;
            put(out, "vendor_cmdline", img.cmdline.as_bytes())
        }
        _ => bail!(
            "{}: unpack handles boot and vendor_boot images only",
            path.display()
        ),
    }
}
