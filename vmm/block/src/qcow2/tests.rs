//! qcow2 tests against QEMU's own tools (`qemu-img`, `qemu-io`) and an in-memory model.

use std::fs;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;

use super::header::Header;
use super::{create_overlay, Qcow2Disk, Qcow2Error};
use crate::testutil::{pattern, TempDir};

const MIB: u64 = 1 << 20;

fn qemu(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is required for qcow2 tests: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `qemu-img check` must report no errors and no leaks (on a closed image: an open one holds
/// the image lock, which QEMU's tools honour).
fn assert_check_clean(image: &Path) {
    let (ok, text) = qemu("qemu-img", &["check", "-f", "qcow2", p(image)]);
    assert!(
        ok && text.contains("No errors were found"),
        "qemu-img check failed:\n{text}"
    );
    assert!(
        !text.contains("leaked"),
        "qemu-img check found leaks:\n{text}"
    );
}

/// `qemu-img compare` of the overlay (through its base) with a raw file.
fn assert_same_as_raw(image: &Path, raw: &Path) {
    let (ok, text) = qemu(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", p(image), p(raw)],
    );
    assert!(ok, "qemu-img compare differs:\n{text}");
}

/// A base image of `size` pseudo-random bytes plus a raw "expected" copy of it.
fn base_and_model(dir: &TempDir, size: u64) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let data = pattern(size, size as usize);
    let base = dir.path("base.raw");
    let model = dir.path("model.raw");
    fs::write(&base, &data).unwrap();
    fs::write(&model, &data).unwrap();
    (base, model, data)
}

fn write_model(model: &Path, buf: &[u8], offset: u64) {
    use std::os::unix::fs::FileExt;
    fs::OpenOptions::new()
        .write(true)
        .open(model)
        .unwrap()
        .write_all_at(buf, offset)
        .unwrap();
}

#[test]
fn created_overlay_is_valid_and_reads_the_base() {
    let dir = TempDir::new("create");
    let (base, _, data) = base_and_model(&dir, 3 * MIB);
    let ov = dir.path("ov.qcow2");
    create_overlay(&base, &ov, 3 * MIB).unwrap();
    assert_check_clean(&ov);
    let (ok, info) = qemu("qemu-img", &["info", "--output=json", p(&ov)]);
    assert!(ok, "{info}");
    assert!(info.contains("\"virtual-size\": 3145728"), "{info}");
    assert!(
        info.contains("\"backing-filename-format\": \"raw\""),
        "{info}"
    );
    assert_same_as_raw(&ov, &base);
    let mut disk = Qcow2Disk::open(&ov, false).unwrap();
    let mut buf = vec![0u8; 100_000];
    disk.read_at(&mut buf, 12_345).unwrap();
    assert_eq!(buf, data[12_345..112_345]);
    assert!(
        matches!(
            create_overlay(&base, &ov, 3 * MIB),
            Err(Qcow2Error::Io { .. })
        ),
        "must not overwrite"
    );
}

#[test]
fn overlay_larger_than_base_reads_zeros_past_it() {
    let dir = TempDir::new("grow");
    let (base, _, _) = base_and_model(&dir, MIB);
    let ov = dir.path("ov.qcow2");
    create_overlay(&base, &ov, 2 * MIB).unwrap();
    let mut disk = Qcow2Disk::open(&ov, true).unwrap();
    let mut buf = vec![0xffu8; 8192];
    disk.read_at(&mut buf, MIB - 4096).unwrap();
    assert!(buf[4096..].iter().all(|&b| b == 0));
    disk.write_at(&[7u8; 10], 2 * MIB - 10).unwrap();
    assert!(matches!(
        disk.write_at(&[7u8; 11], 2 * MIB - 10),
        Err(Qcow2Error::OutOfRange { .. })
    ));
    // QEMU's tools honour our lock on an overlay in use (both use OFD locks).
    let (ok, text) = qemu("qemu-img", &["check", "-f", "qcow2", p(&ov)]);
    assert!(
        !ok && text.contains("lock"),
        "qemu-img opened a locked overlay:\n{text}"
    );
    drop(disk);
    assert_check_clean(&ov);
}

#[test]
fn random_writes_match_raw_and_check_clean_and_base_untouched() {
    let dir = TempDir::new("random");
    let size = 8 * MIB;
    let (base, model, data) = base_and_model(&dir, size);
    let ov = dir.path("ov.qcow2");
    create_overlay(&base, &ov, size).unwrap();
    let mut disk = Qcow2Disk::open(&ov, true).unwrap();
    let offsets = pattern(99, 400);
    for i in 0..200 {
        let off = u64::from(u32::from_le_bytes([
            offsets[i],
            offsets[i + 1],
            offsets[i + 2],
            0,
        ])) * 2
            % (size - 200_000);
        let len = 1 + (offsets[i + 3] as usize) * 700;
        let buf = pattern(i as u64 + 1000, len);
        disk.write_at(&buf, off).unwrap();
        write_model(&model, &buf, off);
    }
    disk.zero_range(MIB, 3 * 65536 + 100, true).unwrap();
    write_model(&model, &vec![0u8; 3 * 65536 + 100], MIB);
    disk.flush().unwrap();
    drop(disk);
    assert_check_clean(&ov);
    assert_same_as_raw(&ov, &model);
    assert_eq!(fs::read(&base).unwrap(), data, "the base image changed");
}

#[test]
fn reads_and_extends_images_written_by_qemu() {
    let dir = TempDir::new("qemuio");
    let (base, model, _) = base_and_model(&dir, 4 * MIB);
    let ov = dir.path("q.qcow2");
    // 512-byte clusters: many L2 tables and refcount blocks get allocated by both sides.
    let (ok, text) = qemu(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=512",
            "-b",
            p(&base),
            "-F",
            "raw",
            p(&ov),
        ],
    );
    assert!(ok, "{text}");
    for (pat, off, len) in [
        (0xab, 4096u64, 65536usize),
        (0x5c, 3 * MIB + 7 * 512, 1536),
        (0x00, 2 * MIB, 4096),
    ] {
        let cmd = format!("write -P {pat} {off} {len}");
        let (ok, text) = qemu("qemu-io", &["-f", "qcow2", "-c", &cmd, p(&ov)]);
        assert!(ok, "{text}");
        write_model(&model, &vec![pat as u8; len], off);
    }
    let (ok, text) = qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -z 1048576 8192", p(&ov)],
    );
    assert!(ok, "{text}");
    write_model(&model, &vec![0u8; 8192], MIB);
    let expect = fs::read(&model).unwrap();
    let mut disk = Qcow2Disk::open(&ov, true).unwrap();
    let mut got = vec![0u8; expect.len()];
    disk.read_at(&mut got, 0).unwrap();
    assert!(
        got == expect,
        "our reads of a qemu-written image differ from the model"
    );
    for i in 0..50u64 {
        let buf = pattern(i, 3000);
        let off = (i * 77_777) % (4 * MIB - 3000);
        disk.write_at(&buf, off).unwrap();
        write_model(&model, &buf, off);
    }
    disk.zero_range(512 * 9, 512 * 40, false).unwrap();
    write_model(&model, &vec![0u8; 512 * 40], 512 * 9);
    drop(disk);
    assert_check_clean(&ov);
    assert_same_as_raw(&ov, &model);
    // And qemu-io reads what we wrote.
    let (ok, text) = qemu(
        "qemu-io",
        &["-f", "qcow2", "-c", "read -P 0 4608 20480", p(&ov)],
    );
    assert!(
        ok && !text.contains("Pattern verification failed"),
        "{text}"
    );
}

/// Corrupt one header field of a fresh overlay and expect an error naming it.
#[test]
fn hostile_headers_are_rejected_with_the_field_named() {
    let dir = TempDir::new("hostile");
    let (base, _, _) = base_and_model(&dir, MIB);
    let cases: &[(&str, usize, &[u8])] = &[
        ("magic", 0, &[0, 0, 0, 0]),
        ("version", 4, &[0, 0, 0, 9]),
        ("cluster_bits", 20, &[0, 0, 0, 40]),
        ("size", 24, &[0xff; 8]),
        ("crypt_method", 32, &[0, 0, 0, 1]),
        ("l1_size", 36, &[0x7f, 0xff, 0xff, 0xff]),
        ("l1_size", 36, &[0, 0, 0, 0]),
        ("l1_table_offset", 40, &[0, 0, 0, 0x10, 0, 0, 0, 0]),
        ("l1_table_offset", 40, &[0, 0, 0, 0, 0, 0, 0, 0x10]),
        ("l1_table_offset", 40, &[0, 0, 0, 0, 0, 1, 0, 0]),
        ("refcount_table_offset", 48, &[0xff; 8]),
        ("refcount_table_clusters", 56, &[0xff, 0xff, 0xff, 0xff]),
        ("incompatible_features", 72, &[0, 0, 0, 0, 0, 0, 0, 1]),
        ("refcount_order", 96, &[0, 0, 0, 6]),
        ("header_length", 100, &[0xff, 0xff, 0, 0]),
        ("backing_file_offset", 8, &[0, 0, 0, 0, 0x7f, 0, 0, 0]),
        ("backing_file_size", 16, &[0, 0, 0x40, 0]),
    ];
    for (i, (name, off, bytes)) in cases.iter().enumerate() {
        let ov = dir.path(&format!("h{i}.qcow2"));
        create_overlay(&base, &ov, MIB).unwrap();
        let mut img = fs::read(&ov).unwrap();
        img[*off..*off + bytes.len()].copy_from_slice(bytes);
        fs::write(&ov, &img).unwrap();
        let err = Qcow2Disk::open(&ov, true)
            .err()
            .unwrap_or_else(|| panic!("corrupt {name} accepted"));
        let msg = err.to_string();
        let expect = if *name == "magic" {
            "not a qcow2 image"
        } else {
            name
        };
        assert!(
            msg.contains(expect),
            "corrupting {name}: error {msg:?} does not name it"
        );
    }
    // Truncated and empty files.
    fs::write(dir.path("empty"), b"").unwrap();
    assert!(Qcow2Disk::open(&dir.path("empty"), false).is_err());
}

/// Point L1/L2/refcount entries at the header, past EOF or at garbage: every access fails
/// cleanly and names the table entry.
#[test]
fn hostile_table_entries_fail_cleanly() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("tables");
    let (base, _, _) = base_and_model(&dir, 2 * MIB);
    let ov = dir.path("ov.qcow2");
    create_overlay(&base, &ov, 2 * MIB).unwrap();
    {
        let mut d = Qcow2Disk::open(&ov, true).unwrap();
        d.write_at(&[1u8; 4096], 0).unwrap();
    }
    let img = fs::read(&ov).unwrap();
    let cs = 65536u64;
    let hdr = Header::parse(&img[..cs as usize], img.len() as u64).unwrap();
    let l1 = hdr.l1_table_offset;
    let l2 = u64::from_be_bytes(img[l1 as usize..l1 as usize + 8].try_into().unwrap())
        & super::table::OFFSET_MASK;
    let cases: &[(&str, u64, u64)] = &[
        ("L1 entry 0", l1, 0x8000_0000_0001_0000), // points at the refcount table
        ("L1 entry 0", l1, 0x8000_00ff_0000_0000), // past EOF
        ("L1 entry 0", l1, 0x8000_0000_0005_0002), // reserved bit
        ("L2 entry 0", l2, 0x8000_00ff_0000_0000), // data past EOF
        ("L2 entry 0", l2, 0x8000_0000_0003_0000), // data over the L1 table
        ("L2 entry 0", l2, 0x8000_0000_0005_0100), // unaligned
        ("compressed", l2, 0x4000_0000_0005_0000),
    ];
    for (name, at, entry) in cases {
        let bad = dir.path("bad.qcow2");
        fs::write(&bad, &img).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&bad)
            .unwrap()
            .write_all_at(&entry.to_be_bytes(), *at)
            .unwrap();
        let mut d = Qcow2Disk::open(&bad, true).unwrap();
        let mut buf = [0u8; 512];
        let err = d.read_at(&mut buf, 0).expect_err(name).to_string();
        assert!(err.contains(name), "{name}: got {err:?}");
        assert!(d.write_at(&buf, 0).is_err(), "{name}: write accepted");
        fs::remove_file(&bad).unwrap();
    }
}

/// A refcount table entry aimed at an L2 table: allocation must fail instead of scribbling
/// refcounts over the mapping.
#[test]
fn refcount_block_over_an_l2_table_is_refused() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("rc-over-l2");
    let (base, _, _) = base_and_model(&dir, MIB);
    let ov = dir.path("ov.qcow2");
    create_overlay(&base, &ov, MIB).unwrap();
    Qcow2Disk::open(&ov, true)
        .unwrap()
        .write_at(&[1u8; 512], 0)
        .unwrap();
    let img = fs::read(&ov).unwrap();
    let l1 = 3 * 65536;
    let l2 = u64::from_be_bytes(img[l1..l1 + 8].try_into().unwrap()) & super::table::OFFSET_MASK;
    fs::OpenOptions::new()
        .write(true)
        .open(&ov)
        .unwrap()
        .write_all_at(&l2.to_be_bytes(), 65536)
        .unwrap();
    let mut d = Qcow2Disk::open(&ov, true).unwrap();
    let err = d.write_at(&[2u8; 512], 65536).unwrap_err().to_string();
    // Whichever table is looked at first names the overlap.
    assert!(
        err.contains("overlaps a refcount block") || err.contains("overlaps an L2 table"),
        "{err}"
    );
}

#[test]
fn read_only_open_refuses_writes_and_bad_backing_is_reported() {
    let dir = TempDir::new("ro");
    let (base, _, _) = base_and_model(&dir, MIB);
    let ov = dir.path("ov.qcow2");
    create_overlay(&base, &ov, MIB).unwrap();
    let mut d = Qcow2Disk::open(&ov, false).unwrap();
    assert!(matches!(
        d.write_at(&[0; 512], 0),
        Err(Qcow2Error::ReadOnly)
    ));
    fs::remove_file(&base).unwrap();
    let err = Qcow2Disk::open(&ov, false).err().unwrap().to_string();
    assert!(
        err.contains("backing file") && err.contains("base.raw"),
        "{err}"
    );
    assert!(create_overlay(&ov, &dir.path("ov2"), MIB)
        .unwrap_err()
        .to_string()
        .contains("qcow2"));
    assert!(create_overlay(&ov, &dir.path("ov3"), 1000)
        .unwrap_err()
        .to_string()
        .contains("size"));
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, len: usize, seed: u64 },
    Zero { off: u64, len: u64, partial: bool },
    Read { off: u64, len: usize },
    Reopen,
}

fn op_strategy(size: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..size, 1usize..20_000, any::<u64>()).prop_map(move |(off, len, seed)| Op::Write { off, len: len.min((size - off) as usize), seed }),
        1 => (0..size, 1u64..300_000, any::<bool>()).prop_map(move |(off, len, partial)| Op::Zero { off, len: len.min(size - off), partial }),
        3 => (0..size, 1usize..100_000).prop_map(move |(off, len)| Op::Read { off, len: len.min((size - off) as usize) }),
        1 => Just(Op::Reopen),
    ]
}

/// Random operation sequences against both a fresh overlay of ours and a qemu-created image
/// with 512-byte clusters; the in-memory model must agree on every read, and `qemu-img
/// check` must be clean at the end.
#[test]
fn prop_random_ops_match_in_memory_model() {
    const SIZE: u64 = 2 * MIB;
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op_strategy(SIZE), 1..40), qemu_made in any::<bool>())| {
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = TempDir::new("prop");
        let (base, _, mut model) = base_and_model(&dir, SIZE);
        let ov = dir.path("ov.qcow2");
        if qemu_made {
            let (ok, text) = qemu("qemu-img", &["create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b", p(&base), "-F", "raw", p(&ov)]);
            prop_assert!(ok, "{}", text);
        } else {
            create_overlay(&base, &ov, SIZE).unwrap();
        }
        let mut disk = Qcow2Disk::open(&ov, true).unwrap();
        for op in &ops {
            match *op {
                Op::Write { off, len, seed } => {
                    let buf = pattern(seed, len);
                    disk.write_at(&buf, off).unwrap();
                    model[off as usize..off as usize + len].copy_from_slice(&buf);
                }
                Op::Zero { off, len, partial } => {
                    disk.zero_range(off, len, partial).unwrap();
                    if partial {
                        model[off as usize..(off + len) as usize].fill(0);
                    } else {
                        let mut check = vec![0u8; len as usize];
                        disk.read_at(&mut check, off).unwrap();
                        // Discard may leave partial clusters alone but must not invent data.
                        for (i, b) in check.iter().enumerate() {
                            let m = &mut model[off as usize + i];
                            prop_assert!(*b == 0 || *b == *m);
                            *m = *b;
                        }
                    }
                }
                Op::Read { off, len } => {
                    let mut buf = vec![0u8; len];
                    disk.read_at(&mut buf, off).unwrap();
                    prop_assert!(buf[..] == model[off as usize..off as usize + len], "read mismatch at {}", off);
                }
                Op::Reopen => {
                    disk.flush().unwrap();
                    drop(disk);
                    disk = crate::testutil::until_unlocked(
                        || Qcow2Disk::open(&ov, true),
                        |e| matches!(e, Qcow2Error::Locked(_)),
                    );
                }
            }
        }
        let mut all = vec![0u8; SIZE as usize];
        disk.read_at(&mut all, 0).unwrap();
        prop_assert!(all == model);
        drop(disk);
        assert_check_clean(&ov);
        prop_assert!(fs::read(&base).unwrap() == pattern(SIZE, SIZE as usize), "base changed");
    });
    eprintln!("fuzz qcow2_model: {} cases", cases.into_inner());
}

/// Arbitrary bytes as an image header never panic the parser.
#[test]
fn prop_header_parser_never_panics() {
    let cases = std::sync::atomic::AtomicUsize::new(0);
    let config = ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    };
    proptest!(config, |(mut bytes in proptest::collection::vec(any::<u8>(), 0..600), file_len in any::<u64>(), keep_magic in any::<bool>())| {
        cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if keep_magic && bytes.len() >= 8 {
            bytes[..8].copy_from_slice(&[0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
        }
        let _ = Header::parse(&bytes, file_len);
    });
    eprintln!("fuzz qcow2_header: {} cases", cases.into_inner());
}
