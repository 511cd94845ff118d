//! The phone disk: a GPT over partition image files, written either as crosvm composite
//! disk (GPT header file + the partition files in place + GPT footer file, tied together by
//! a composite spec) or as one flat raw disk with the partition contents copied in.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::composite::{ComponentDisk, CompositeDisk, COMPOSITE_VERSION};
use crate::error::{invalid, io_err, Result};
use crate::gpt::{Gpt, FOOTER_SECTORS, SECTOR};

/// Partition alignment: every partition starts and ends on a 4 KiB boundary, so partition
/// files map 1:1 into the composite disk.
pub const PARTITION_ALIGN: u64 = 4096;

/// A partition and the file holding its contents.
#[derive(Debug, Clone)]
pub struct PartitionFile {
    /// GPT partition name.
    pub name: String,
    /// Image file (its size must be a multiple of 4 KiB for a composite disk).
    pub path: PathBuf,
    /// Whether the guest may write it (composite disks only).
    pub writable: bool,
}

fn sizes(parts: &[PartitionFile]) -> Result<Vec<(&str, u64)>> {
    parts
        .iter()
        .map(|p| {
            Ok((
                p.name.as_str(),
                std::fs::metadata(&p.path).map_err(io_err(&p.path))?.len(),
            ))
        })
        .collect()
}

fn write_file(path: &Path, data: &[u8]) -> Result<()> {
    std::fs::write(path, data).map_err(io_err(path))
}

/// Writes `<out_dir>/<stem>-header.img`, `<stem>-footer.img` and the spec `<stem>.img`
/// (absolute component paths) and returns the spec. Partition files stay where they are.
pub fn write_composite(
    parts: &[PartitionFile],
    out_dir: &Path,
    stem: &str,
) -> Result<CompositeDisk> {
    let sizes = sizes(parts)?;
    for (p, (_, len)) in parts.iter().zip(&sizes) {
        if len % PARTITION_ALIGN != 0 || *len == 0 {
            return Err(invalid(
                format!("partition {}", p.name),
                format!("{} ({len} bytes)", p.path.display()),
                "size must be a non-zero multiple of 4096 for a composite disk",
            ));
        }
    }
    let gpt = Gpt::lay_out(stem, &sizes, PARTITION_ALIGN)?;
    let abs = |p: &Path| std::path::absolute(p).map_err(io_err(p));
    let header_path = abs(&out_dir.join(format!("{stem}-header.img")))?;
    let footer_path = abs(&out_dir.join(format!("{stem}-footer.img")))?;
    let mut header = gpt.primary_bytes()?;
    header.resize((gpt.partitions[0].first_lba * SECTOR) as usize, 0);
    write_file(&header_path, &header)?;
    write_file(&footer_path, &gpt.backup_bytes()?)?;
    let component = |path: &Path, offset, writable| ComponentDisk {
        file_path: path.display().to_string(),
        offset,
        writable,
    };
    let mut components = vec![component(&header_path, 0, false)];
    for (p, part) in parts.iter().zip(&gpt.partitions) {
        components.push(component(&abs(&p.path)?, part.offset(), p.writable));
    }
    components.push(component(
        &footer_path,
        (gpt.disk_sectors - FOOTER_SECTORS) * SECTOR,
        false,
    ));
    let spec = CompositeDisk {
        version: COMPOSITE_VERSION,
        components,
        length: gpt.disk_sectors * SECTOR,
    };
    write_file(&out_dir.join(format!("{stem}.img")), &spec.to_bytes())?;
    Ok(spec)
}

/// Writes one raw disk at `out` holding the GPT and every partition's contents (sizes are
/// rounded up to 4 KiB with zeros); returns the table.
pub fn write_flat(parts: &[PartitionFile], out: &Path) -> Result<Gpt> {
    let sizes = sizes(parts)?;
    let gpt = Gpt::lay_out(&out.display().to_string(), &sizes, PARTITION_ALIGN)?;
    let mut disk = File::create(out).map_err(io_err(out))?;
    disk.write_all(&gpt.primary_bytes()?).map_err(io_err(out))?;
    for (p, part) in parts.iter().zip(&gpt.partitions) {
        disk.seek(SeekFrom::Start(part.offset()))
            .map_err(io_err(out))?;
        let mut src = File::open(&p.path).map_err(io_err(&p.path))?;
        std::io::copy(&mut src, &mut disk).map_err(io_err(out))?;
    }
    disk.seek(SeekFrom::Start(
        (gpt.disk_sectors - FOOTER_SECTORS) * SECTOR,
    ))
    .map_err(io_err(out))?;
    disk.write_all(&gpt.backup_bytes()?).map_err(io_err(out))?;
    Ok(gpt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn composite_and_flat_describe_the_same_disk() {
        let dir = std::env::temp_dir().join(format!("android-images-disk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut parts = Vec::new();
        for (i, name) in ["misc", "boot_a", "userdata"].iter().enumerate() {
            let path = dir.join(format!("{name}.img"));
            std::fs::write(&path, vec![i as u8 + 1; 4096 * (i + 1)]).unwrap();
            parts.push(PartitionFile {
                name: name.to_string(),
                path,
                writable: *name == "userdata",
            });
        }
        let spec = write_composite(&parts, &dir, "phone").unwrap();
        spec.check_files(&dir).unwrap();
        assert_eq!(spec.components.len(), 5);
        // Reassemble the composite disk by hand and compare with the flat one.
        let mut assembled = vec![0u8; spec.length as usize];
        for c in &spec.components {
            let data = std::fs::read(&c.file_path).unwrap();
            assembled[c.offset as usize..][..data.len()].copy_from_slice(&data);
        }
        let flat_path = dir.join("flat.img");
        let gpt = write_flat(&parts, &flat_path).unwrap();
        let mut flat = Vec::new();
        File::open(&flat_path)
            .unwrap()
            .read_to_end(&mut flat)
            .unwrap();
        assert_eq!(flat.len(), assembled.len());
        let read = Gpt::read(
            &mut std::io::Cursor::new(&assembled),
            assembled.len() as u64,
        )
        .unwrap();
        assert_eq!(
            read.partitions
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["misc", "boot_a", "userdata"]
        );
        assert_eq!(read.partitions[2].first_lba, gpt.partitions[2].first_lba);
        let ud = &read.partitions[2];
        assert!(assembled[ud.offset() as usize..][..ud.size() as usize]
            .iter()
            .all(|&b| b == 3));
        std::fs::write(&parts[0].path, [0u8; 100]).unwrap();
        assert!(write_composite(&parts, &dir, "bad")
            .unwrap_err()
            .to_string()
            .contains("multiple of 4096"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
