//! Property tests of every parser: random bytes and random mutations of valid images never
//! panic (errors only), and generated valid images round-trip exactly. Iteration counts are
//! printed; raise them with PROPTEST_CASES.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};

use android_images::bootconfig::{append_trailer, split_trailer};
use android_images::composite::{ComponentDisk, CompositeDisk};
use android_images::gpt::Gpt;
use android_images::qcow2::{create_overlay, parse_header};
use android_images::sparse::{sparsify, unsparse, SparseOptions};
use android_images::vendor_boot::{VendorRamdisk, VendorRamdiskType};
use android_images::{BootConfig, BootImage, OsVersion, VendorBootImage};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs `test` over `strategy` and prints how many cases ran.
fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let count = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |v| {
        count.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    eprintln!("fuzz {name}: {} cases", count.load(Ordering::Relaxed));
    result.unwrap();
}

/// A valid image plus a list of (position, byte) overwrites applied to it.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        proptest::collection::vec((0..len, any::<u8>()), 1..8),
        0..=len,
    )
        .prop_map(move |(edits, cut)| {
            let mut b = valid.clone();
            for (i, v) in edits {
                b[i] = v;
            }
            b.truncate(cut.max(1));
            b
        })
}

fn sample_boot(version: u32) -> Vec<u8> {
    let mut img = BootImage::new(version);
    img.kernel = vec![1; 3000];
    img.ramdisk = vec![2; 100];
    if version < 3 {
        img.second = vec![3; 10];
    }
    if (1..3).contains(&version) {
        img.recovery_dtbo = vec![4; 10];
    }
    if version == 2 {
        img.dtb = vec![5; 10];
    }
    if version == 4 {
        img.signature = vec![6; 10];
    }
    img.to_bytes().unwrap()
}

fn sample_vendor() -> Vec<u8> {
    let mut v = VendorBootImage::new(4);
    v.page_size = 2048;
    v.ramdisks = vec![
        VendorRamdisk::new(VendorRamdiskType::Platform, "a", vec![1; 100]),
        VendorRamdisk::new(VendorRamdiskType::Dlkm, "b", vec![2; 50]),
    ];
    v.bootconfig = b"a = \"b\"\n".to_vec();
    v.to_bytes().unwrap()
}

#[test]
fn fuzz_boot_image_parser() {
    fuzz(
        "boot random bytes",
        proptest::collection::vec(any::<u8>(), 0..4096).prop_map(|mut b| {
            if b.len() >= 8 {
                b[..8].copy_from_slice(b"ANDROID!");
            }
            b
        }),
        |b| {
            let _ = BootImage::parse(&b);
            Ok(())
        },
    );
    for v in 0..=4 {
        fuzz(
            &format!("boot v{v} mutations"),
            mutated(sample_boot(v)),
            |b| {
                if let Ok(img) = BootImage::parse(&b) {
                    // Whatever parses must serialize again without panicking.
                    let _ = img.to_bytes();
                }
                Ok(())
            },
        );
    }
}

#[test]
fn fuzz_boot_image_round_trip() {
    let strategy = (
        0u32..=4,
        proptest::collection::vec(any::<u8>(), 1..5000),
        proptest::collection::vec(any::<u8>(), 0..3000),
        "[ -~]{0,1536}",
        0u32..128,
        2000u32..2128,
        1u32..=12,
        0u32..4,
    );
    fuzz(
        "boot round trip",
        strategy,
        |(version, kernel, ramdisk, cmdline, major, year, month, page)| {
            let mut img = BootImage::new(version);
            if version < 3 {
                img.page_size = 2048 << page;
            }
            img.kernel = kernel;
            img.ramdisk = ramdisk;
            img.cmdline = cmdline;
            img.os_version = OsVersion::new(major, 0, 0, year, month).unwrap();
            let bytes = img.to_bytes().unwrap();
            prop_assert_eq!(bytes.len() % img.page_size as usize, 0);
            let mut back = BootImage::parse(&bytes).unwrap();
            if version < 3 {
                prop_assert_eq!(back.id, Some(img.mkbootimg_id()));
                back.id = None;
            }
            prop_assert_eq!(back, img);
            Ok(())
        },
    );
}

#[test]
fn fuzz_vendor_boot_parser() {
    fuzz("vendor_boot mutations", mutated(sample_vendor()), |b| {
        if let Ok(img) = VendorBootImage::parse(&b) {
            let _ = img.to_bytes();
        }
        Ok(())
    });
    let entry = (
        0u32..4,
        "[a-z]{0,32}",
        proptest::collection::vec(any::<u8>(), 0..300),
    );
    fuzz(
        "vendor_boot round trip",
        (
            proptest::collection::vec(entry, 0..5),
            "[ -~]{0,2048}",
            proptest::collection::vec(any::<u8>(), 0..100),
        ),
        |(entries, cmdline, dtb)| {
            let mut v = VendorBootImage::new(4);
            v.cmdline = cmdline;
            v.dtb = dtb;
            v.ramdisks = entries
                .into_iter()
                .map(|(t, n, d)| VendorRamdisk::new(VendorRamdiskType::from_u32(t), &n, d))
                .collect();
            prop_assert_eq!(VendorBootImage::parse(&v.to_bytes().unwrap()).unwrap(), v);
            Ok(())
        },
    );
}

#[test]
fn fuzz_bootconfig() {
    fuzz(
        "bootconfig text parser",
        "[ -~\n\t{};,=#'\"]{0,200}",
        |text| {
            if let Ok(c) = BootConfig::parse(&text) {
                // Whatever parses renders to text that parses to the same configuration.
                let again = BootConfig::parse(&c.render().unwrap()).unwrap();
                prop_assert_eq!(again, c);
            }
            Ok(())
        },
    );
    let kv = (
        "[a-z][a-z0-9_]{0,8}(\\.[a-z0-9_-]{1,8}){0,2}",
        "[ -!#-~]{0,20}",
    );
    fuzz(
        "bootconfig trailer round trip",
        (
            proptest::collection::vec(kv, 0..10),
            proptest::collection::vec(any::<u8>(), 0..64),
        ),
        |(pairs, initrd)| {
            let mut c = BootConfig::new();
            for (k, v) in &pairs {
                // A key that is also a prefix of another is legal in our flat map but not rendered
                // ambiguously; only distinct keys are generated.
                c.set(&format!("androidboot.{k}"), v).unwrap();
            }
            let text = c.render().unwrap();
            let mut buf = initrd.clone();
            append_trailer(&mut buf, text.as_bytes()).unwrap();
            prop_assert_eq!(buf.len() % 4, 0);
            let (rd, data) = split_trailer(&buf).unwrap().unwrap();
            prop_assert_eq!(rd, &initrd[..]);
            let parsed =
                BootConfig::parse(std::str::from_utf8(data).unwrap().trim_end_matches('\0'))
                    .unwrap();
            prop_assert_eq!(parsed, c);
            Ok(())
        },
    );
    let mut good = vec![7u8; 10];
    append_trailer(&mut good, b"k = \"v\"\n").unwrap();
    fuzz("bootconfig trailer mutations", mutated(good), |b| {
        let _ = split_trailer(&b);
        Ok(())
    });
}

#[test]
fn fuzz_sparse() {
    let mut raw = vec![0u8; 4096];
    raw.extend(vec![9u8; 4096]);
    raw.extend((0..4096).map(|i| i as u8));
    let mut good = Vec::new();
    sparsify(
        &mut Cursor::new(&raw),
        raw.len() as u64,
        &mut good,
        &SparseOptions {
            zeros_as_dont_care: true,
            crc: true,
            ..Default::default()
        },
    )
    .unwrap();
    fuzz("sparse mutations", mutated(good), |b| {
        let _ = unsparse(&mut Cursor::new(&b), &mut Cursor::new(Vec::new()), 1 << 24);
        Ok(())
    });
    let block = prop_oneof![
        Just(vec![0u8; 1024]),
        any::<u8>().prop_map(|v| vec![v; 1024]),
        proptest::collection::vec(any::<u8>(), 1024)
    ];
    fuzz(
        "sparse round trip",
        (
            proptest::collection::vec(block, 1..12),
            0usize..1024,
            any::<bool>(),
            any::<bool>(),
        ),
        |(blocks, trim, dc, crc)| {
            let mut raw: Vec<u8> = blocks.concat();
            raw.truncate(raw.len() - trim.min(raw.len() - 1));
            let mut sparse = Vec::new();
            let opts = SparseOptions {
                block_size: 1024,
                zeros_as_dont_care: dc,
                crc,
            };
            sparsify(&mut Cursor::new(&raw), raw.len() as u64, &mut sparse, &opts).unwrap();
            let mut out = Cursor::new(Vec::new());
            unsparse(&mut Cursor::new(&sparse), &mut out, 1 << 24).unwrap();
            let out = out.into_inner();
            prop_assert_eq!(&out[..raw.len()], &raw[..]);
            prop_assert!(out[raw.len()..].iter().all(|&b| b == 0));
            Ok(())
        },
    );
}

#[test]
fn fuzz_gpt_reader() {
    let gpt = Gpt::lay_out("fuzz", &[("misc", 4096), ("boot_a", 8192)], 4096).unwrap();
    let mut disk = gpt.primary_bytes().unwrap();
    disk.resize(((gpt.disk_sectors - 33) * 512) as usize, 0);
    disk.extend(gpt.backup_bytes().unwrap());
    // Mutations confined to the tables (the partition data is irrelevant to the reader).
    let tables: Vec<u8> = disk.clone();
    let disk_for_crc = disk.clone();
    fuzz(
        "gpt mutations",
        (
            proptest::collection::vec((0..34 * 512usize, any::<u8>()), 1..6),
            any::<bool>(),
        ),
        move |(edits, backup)| {
            let mut d = tables.clone();
            let base = if backup { d.len() - 33 * 512 } else { 0 };
            for (i, v) in edits {
                if base + i < d.len() {
                    d[base + i] = v;
                }
            }
            let _ = Gpt::read(&mut Cursor::new(&d), d.len() as u64);
            Ok(())
        },
    );
    // Header fields changed behind a recomputed CRC, so the reader's field checks are reached.
    fuzz(
        "gpt header fields with valid crc",
        proptest::collection::vec((24usize..92, any::<u8>()), 1..6),
        move |edits| {
            let mut d = disk_for_crc.clone();
            for (i, v) in edits {
                d[512 + i] = v;
            }
            d[512 + 16..512 + 20].fill(0);
            let crc = crc32fast::hash(&d[512..512 + 92]);
            d[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
            let _ = Gpt::read(&mut Cursor::new(&d), d.len() as u64);
            Ok(())
        },
    );
}

#[test]
fn fuzz_composite_and_qcow2() {
    let spec = CompositeDisk {
        version: 2,
        components: vec![
            ComponentDisk {
                file_path: "/a".into(),
                offset: 0,
                writable: false,
            },
            ComponentDisk {
                file_path: "/b".into(),
                offset: 4096,
                writable: true,
            },
        ],
        length: 1 << 20,
    };
    fuzz("composite mutations", mutated(spec.to_bytes()), |b| {
        let _ = CompositeDisk::parse(&b);
        Ok(())
    });
    let comp = ("/[a-z/]{1,40}", 1u64..1 << 40, any::<bool>());
    fuzz(
        "composite round trip",
        proptest::collection::btree_map(1u64..1 << 40, comp, 0..8),
        |m| {
            let components: Vec<ComponentDisk> = m
                .into_iter()
                .map(|(o, (p, _, w))| ComponentDisk {
                    file_path: p,
                    offset: o,
                    writable: w,
                })
                .collect();
            let d = CompositeDisk {
                version: 2,
                components,
                length: 1 << 41,
            };
            prop_assert_eq!(CompositeDisk::parse(&d.to_bytes()).unwrap(), d);
            Ok(())
        },
    );
    let overlay = create_overlay(1 << 30, "base.img", "raw").unwrap()[..4096].to_vec();
    fuzz("qcow2 header mutations", mutated(overlay), |b| {
        let _ = parse_header(&b);
        Ok(())
    });
}
