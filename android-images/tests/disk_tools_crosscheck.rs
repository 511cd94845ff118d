//! Cross-checks of the disk formats against independent tools: libsparse's img2simg/simg2img
//! (both directions), qemu-img (qcow2 overlays) and sgdisk (GPT).

mod common;

use std::fs::File;
use std::io::Cursor;
use std::process::Command;

use android_images::disk::{write_composite, write_flat, PartitionFile};
use android_images::gpt::{Gpt, PHONE_PARTITIONS};
use android_images::qcow2::create_overlay;
use android_images::sparse::{sparsify, unsparse, ChunkKind, SparseOptions};
use common::{data, have_tool, run, scratch};

/// A raw image with zero, filled, random and partial-block regions.
fn raw_image() -> Vec<u8> {
    let mut img = vec![0u8; 3 * 4096];
    img.extend(data(5 * 4096 + 100, 1));
    img.extend(std::iter::repeat_n([0xde, 0xad, 0xbe, 0xef], 4096).flatten());
    img.extend(vec![0u8; 8 * 4096]);
    img.extend(data(4096, 2));
    img
}

#[test]
fn our_sparse_images_expand_with_simg2img() {
    if !have_tool("simg2img", "android-sdk-libsparse-utils") {
        return;
    }
    let dir = scratch("simg2img");
    let raw = raw_image();
    for (i, opts) in [
        SparseOptions::default(),
        SparseOptions {
            zeros_as_dont_care: true,
            crc: true,
            ..Default::default()
        },
        SparseOptions {
            block_size: 1024,
            ..Default::default()
        },
    ]
    .iter()
    .enumerate()
    {
        let sparse_path = dir.join(format!("ours{i}.simg"));
        let mut f = File::create(&sparse_path).unwrap();
        sparsify(&mut Cursor::new(&raw), raw.len() as u64, &mut f, opts).unwrap();
        drop(f);
        let out = dir.join(format!("expanded{i}.img"));
        run(Command::new("simg2img").arg(&sparse_path).arg(&out));
        let expanded = std::fs::read(&out).unwrap();
        assert_eq!(
            &expanded[..raw.len()],
            &raw[..],
            "simg2img of our sparse image ({opts:?})"
        );
        assert!(expanded.len() >= raw.len() && expanded[raw.len()..].iter().all(|&b| b == 0));
        assert_eq!(expanded.len() % opts.block_size as usize, 0);
        eprintln!("cross-check simg2img expands our sparse image {opts:?}: PASS");
    }
}

#[test]
fn img2simg_images_expand_with_our_reader() {
    if !have_tool("img2simg", "android-sdk-libsparse-utils") {
        return;
    }
    let dir = scratch("img2simg");
    let raw = raw_image();
    let raw_path = dir.join("raw.img");
    let mut aligned = raw.clone();
    aligned.resize(raw.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&raw_path, &aligned).unwrap();
    for block in ["4096", "1024"] {
        let sparse_path = dir.join(format!("theirs-{block}.simg"));
        run(Command::new("img2simg")
            .arg(&raw_path)
            .arg(&sparse_path)
            .arg(block));
        let mut out = Cursor::new(Vec::new());
        let (header, chunks) =
            unsparse(&mut File::open(&sparse_path).unwrap(), &mut out, 1 << 30).unwrap();
        assert_eq!(
            out.into_inner(),
            aligned,
            "our expansion of img2simg's image (block {block})"
        );
        assert!(chunks.iter().any(|c| c.kind == ChunkKind::Raw));
        assert!(
            chunks
                .iter()
                .any(|c| matches!(c.kind, ChunkKind::Fill(_) | ChunkKind::DontCare)),
            "{chunks:?}"
        );
        eprintln!(
            "cross-check img2simg -> our unsparse (block {block}, {} chunks, {} blocks): PASS",
            chunks.len(),
            header.total_blocks
        );
    }
}

#[test]
fn qemu_img_accepts_our_qcow2_overlays() {
    if !have_tool("qemu-img", "qemu-utils") {
        return;
    }
    let dir = scratch("qemu-img");
    let base = dir.join("base.img");
    let size = 3u64 << 30;
    File::create(&base).unwrap().set_len(size).unwrap();
    let overlay = dir.join("overlay.qcow2");
    std::fs::write(&overlay, create_overlay(size, "base.img", "raw").unwrap()).unwrap();
    run(Command::new("qemu-img").arg("check").arg(&overlay));
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay));
    assert!(info.contains("\"virtual-size\": 3221225472"), "{info}");
    assert!(
        info.contains("\"backing-filename\": \"base.img\""),
        "{info}"
    );
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    run(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&overlay)
        .arg(&base));
    // An unsafe rebase rewrites the header through qemu; the result must still check clean.
    run(Command::new("qemu-img")
        .args(["rebase", "-u", "-b", "base.img", "-F", "raw"])
        .arg(&overlay));
    run(Command::new("qemu-img").arg("check").arg(&overlay));
    eprintln!("cross-check qemu-img check/info/compare on our qcow2 overlay: PASS");
}

#[test]
fn sgdisk_verifies_our_gpt_and_reads_partition_names() {
    if !have_tool("sgdisk", "gdisk") {
        return;
    }
    let dir = scratch("sgdisk");
    let parts: Vec<PartitionFile> = PHONE_PARTITIONS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = dir.join(format!("{name}.img"));
            std::fs::write(&path, data(4096 * (i + 1), i as u64)).unwrap();
            PartitionFile {
                name: name.to_string(),
                path,
                writable: *name == "userdata",
            }
        })
        .collect();
    let flat = dir.join("flat.img");
    let gpt = write_flat(&parts, &flat).unwrap();
    let verify = run(Command::new("sgdisk").arg("-v").arg(&flat));
    assert!(verify.contains("No problems found"), "{verify}");
    let listing = run(Command::new("sgdisk").arg("-p").arg(&flat));
    for (n, p) in gpt.partitions.iter().enumerate() {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&(n + 1).to_string()))
            .unwrap_or_else(|| panic!("{listing}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            (cols[1], cols[2]),
            (
                p.first_lba.to_string().as_str(),
                p.last_lba.to_string().as_str()
            ),
            "{line}"
        );
        assert_eq!(*cols.last().unwrap(), p.name, "{line}");
    }
    let info = run(Command::new("sgdisk").args(["-i", "2"]).arg(&flat));
    assert!(
        info.contains(&gpt.partitions[1].unique_guid.to_string()),
        "{info}"
    );
    assert!(
        info.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "{info}"
    );
    // The composite disk, assembled, is the same table.
    let spec = write_composite(&parts, &dir, "phone").unwrap();
    let mut assembled = vec![0u8; spec.length as usize];
    for c in &spec.components {
        let d = std::fs::read(&c.file_path).unwrap();
        assembled[c.offset as usize..][..d.len()].copy_from_slice(&d);
    }
    let joined = dir.join("assembled.img");
    std::fs::write(&joined, &assembled).unwrap();
    assert!(run(Command::new("sgdisk").arg("-v").arg(&joined)).contains("No problems found"));
    let read = Gpt::read(&mut Cursor::new(&assembled), assembled.len() as u64).unwrap();
    assert_eq!(read.partitions.len(), PHONE_PARTITIONS.len());
    eprintln!("cross-check sgdisk -v/-p/-i on our GPT (flat and composite-assembled): PASS");
}
