//! Cross-checks against AOSP's own tools (Debian `mkbootimg` package, AOSP 10 versions):
//! our writer byte-identical to mkbootimg for boot v0/v3 and vendor_boot v3, our parser
//! reading mkbootimg's output field for field, and unpack_bootimg extracting the same payloads
//! from our v0..v4 images.

mod common;

use std::path::Path;
use std::process::Command;

use android_images::vendor_boot::{VendorRamdisk, VendorRamdiskType};
use android_images::{BootImage, LoadAddresses, OsVersion, VendorBootImage};
use common::{data, have_tool, run, scratch};

/// A cmdline longer than 512 bytes, so v0 uses `extra_cmdline` too.
fn long_cmdline() -> String {
    let mut c = String::from("console=hvc0 androidboot.hardware=cloudphone");
    while c.len() < 700 {
        c.push_str(" loglevel=7");
    }
    c
}

struct Inputs {
    kernel: Vec<u8>,
    ramdisk: Vec<u8>,
    second: Vec<u8>,
}

fn inputs(dir: &Path) -> Inputs {
    let i = Inputs {
        kernel: data(10_001, 1),
        ramdisk: data(3_333, 2),
        second: data(77, 3),
    };
    std::fs::write(dir.join("kernel"), &i.kernel).unwrap();
    std::fs::write(dir.join("ramdisk"), &i.ramdisk).unwrap();
    std::fs::write(dir.join("second"), &i.second).unwrap();
    i
}

fn ours(version: u32, page_size: u32, i: &Inputs, cmdline: &str) -> BootImage {
    let mut img = BootImage::new(version);
    img.page_size = page_size;
    img.kernel = i.kernel.clone();
    img.ramdisk = i.ramdisk.clone();
    img.cmdline = cmdline.into();
    img.os_version = OsVersion::parse("11.0.3", "2021-06").unwrap();
    if version < 3 {
        img.second = i.second.clone();
        img.board_name = "cloudphone".into();
    }
    img.apply_load_addresses(&LoadAddresses::default()).unwrap();
    img
}

fn mkbootimg(dir: &Path, version: u32, page_size: u32, cmdline: &str, out: &str) -> Vec<u8> {
    let mut cmd = Command::new("mkbootimg");
    cmd.current_dir(dir)
        .args([
            "--kernel",
            "kernel",
            "--ramdisk",
            "ramdisk",
            "--cmdline",
            cmdline,
        ])
        .args(["--os_version", "11.0.3", "--os_patch_level", "2021-06"])
        .args(["--header_version", &version.to_string(), "-o", out]);
    if version < 3 {
        cmd.args([
            "--second",
            "second",
            "--board",
            "cloudphone",
            "--pagesize",
            &page_size.to_string(),
        ]);
    }
    run(&mut cmd);
    std::fs::read(dir.join(out)).unwrap()
}

#[test]
fn boot_v0_byte_identical_to_mkbootimg() {
    if !have_tool("mkbootimg", "mkbootimg") {
        return;
    }
    let dir = scratch("mkbootimg-v0");
    let i = inputs(&dir);
    for page in [2048u32, 4096, 16384] {
        let theirs = mkbootimg(&dir, 0, page, &long_cmdline(), "theirs.img");
        let mine = ours(0, page, &i, &long_cmdline());
        assert_eq!(
            mine.to_bytes().unwrap(),
            theirs,
            "boot v0, page size {page}: bytes differ from mkbootimg"
        );
        let mut parsed = BootImage::parse(&theirs).unwrap();
        assert_eq!(parsed.id, Some(mine.mkbootimg_id()));
        parsed.id = None;
        assert_eq!(
            parsed, mine,
            "boot v0 page {page}: fields parsed from mkbootimg's image"
        );
        eprintln!("cross-check boot v0 page {page}: byte-identical to mkbootimg, parsed field for field: PASS");
    }
}

#[test]
fn boot_v3_matches_mkbootimg_except_its_header_size_bug() {
    if !have_tool("mkbootimg", "mkbootimg") {
        return;
    }
    let dir = scratch("mkbootimg-v3");
    let i = inputs(&dir);
    let theirs = mkbootimg(&dir, 3, 4096, &long_cmdline(), "theirs.img");
    let mine = ours(3, 4096, &i, &long_cmdline()).to_bytes().unwrap();
    // AOSP 10's mkbootimg writes header_size 1596; bootimg.h's boot_img_hdr_v3 is 1580 bytes.
    assert_eq!(u32::from_le_bytes(theirs[20..24].try_into().unwrap()), 1596);
    assert_eq!(u32::from_le_bytes(mine[20..24].try_into().unwrap()), 1580);
    assert_eq!(theirs.len(), mine.len());
    let diff: Vec<usize> = (0..mine.len()).filter(|&k| mine[k] != theirs[k]).collect();
    assert!(
        diff.iter().all(|k| (20..24).contains(k)),
        "bytes differ outside header_size: {:?}",
        &diff[..diff.len().min(10)]
    );
    let parsed = BootImage::parse(&theirs).unwrap();
    assert_eq!(parsed.header_size_override, Some(1596));
    assert_eq!(
        (parsed.kernel, parsed.ramdisk, parsed.cmdline.as_str()),
        (i.kernel.clone(), i.ramdisk.clone(), long_cmdline().as_str())
    );
    assert_eq!(
        parsed.os_version,
        OsVersion::parse("11.0.3", "2021-06").unwrap()
    );
    assert_eq!(
        BootImage::parse(&theirs).unwrap().to_bytes().unwrap(),
        theirs,
        "parse + rewrite of mkbootimg's v3"
    );
    eprintln!("cross-check boot v3: identical to mkbootimg except header_size (1596 vs 1580), parsed field for field: PASS");
}

#[test]
fn vendor_boot_v3_matches_mkbootimg_except_its_header_size_bug() {
    if !have_tool("mkbootimg", "mkbootimg") {
        return;
    }
    let dir = scratch("mkbootimg-vendor-v3");
    let (vr, dtb) = (data(5000, 4), data(300, 5));
    std::fs::write(dir.join("vendor_ramdisk"), &vr).unwrap();
    std::fs::write(dir.join("dtb"), &dtb).unwrap();
    run(Command::new("mkbootimg").current_dir(&dir).args([
        "--header_version",
        "3",
        "--vendor_boot",
        "vendor.img",
        "--vendor_ramdisk",
        "vendor_ramdisk",
        "--dtb",
        "dtb",
        "--vendor_cmdline",
        "androidboot.console=hvc1 quiet",
        "--board",
        "cloudphone",
        "--pagesize",
        "4096",
    ]));
    let theirs = std::fs::read(dir.join("vendor.img")).unwrap();
    let mut mine = VendorBootImage::new(3);
    mine.cmdline = "androidboot.console=hvc1 quiet".into();
    mine.board_name = "cloudphone".into();
    mine.ramdisks = vec![VendorRamdisk::new(VendorRamdiskType::None, "", vr.clone())];
    mine.dtb = dtb.clone();
    let bytes = mine.to_bytes().unwrap();
    // AOSP 10 writes 2108; bootimg.h's vendor_boot_img_hdr_v3 is 2112 bytes.
    assert_eq!(
        u32::from_le_bytes(theirs[2096..2100].try_into().unwrap()),
        2108
    );
    assert_eq!(
        u32::from_le_bytes(bytes[2096..2100].try_into().unwrap()),
        2112
    );
    let diff: Vec<usize> = (0..bytes.len().max(theirs.len()))
        .filter(|&k| bytes.get(k) != theirs.get(k))
        .collect();
    assert!(
        diff.iter().all(|k| (2096..2100).contains(k)),
        "differ outside header_size: {:?}",
        &diff[..diff.len().min(10)]
    );
    let parsed = VendorBootImage::parse(&theirs).unwrap();
    assert_eq!(
        VendorBootImage {
            header_size_override: None,
            ..parsed.clone()
        },
        mine
    );
    assert_eq!(parsed.to_bytes().unwrap(), theirs);
    eprintln!("cross-check vendor_boot v3: identical to mkbootimg except header_size (2108 vs 2112), parsed field for field: PASS");
}

#[test]
fn unpack_bootimg_extracts_our_payloads_v0_to_v4() {
    if !have_tool("unpack_bootimg", "mkbootimg") {
        return;
    }
    let dir = scratch("unpack-bootimg");
    let i = inputs(&dir);
    for version in 0..=4 {
        let mut img = ours(version, 4096, &i, "console=hvc0");
        if (1..3).contains(&version) {
            img.recovery_dtbo = data(2222, 6);
        }
        if version == 2 {
            img.dtb = data(111, 7);
        }
        if version == 4 {
            img.signature = data(4096, 8);
        }
        let path = dir.join(format!("boot-v{version}.img"));
        std::fs::write(&path, img.to_bytes().unwrap()).unwrap();
        let out = dir.join(format!("out-v{version}"));
        let printed = run(Command::new("unpack_bootimg")
            .arg("--boot_img")
            .arg(&path)
            .arg("--out")
            .arg(&out));
        assert!(
            printed.contains("command line args: console=hvc0"),
            "{printed}"
        );
        let read = |n: &str| std::fs::read(out.join(n)).unwrap();
        assert_eq!(read("kernel"), img.kernel, "v{version} kernel");
        assert_eq!(read("ramdisk"), img.ramdisk, "v{version} ramdisk");
        if version < 3 {
            assert_eq!(read("second"), img.second, "v{version} second");
        }
        if (1..3).contains(&version) {
            assert_eq!(
                read("recovery_dtbo"),
                img.recovery_dtbo,
                "v{version} recovery_dtbo"
            );
        }
        if version == 2 {
            assert_eq!(read("dtb"), img.dtb, "v{version} dtb");
        }
        eprintln!("cross-check unpack_bootimg on our boot v{version}: same payloads: PASS");
    }
    // vendor_boot v4 read by unpack_bootimg as v3: the concatenated ramdisks and the dtb.
    let mut v = VendorBootImage::new(4);
    v.ramdisks = vec![
        VendorRamdisk::new(VendorRamdiskType::Platform, "a", data(5000, 9)),
        VendorRamdisk::new(VendorRamdiskType::Dlkm, "b", data(700, 10)),
    ];
    v.dtb = data(99, 11);
    v.bootconfig = b"androidboot.hardware = \"cloudphone\"\n".to_vec();
    let path = dir.join("vendor-v4.img");
    std::fs::write(&path, v.to_bytes().unwrap()).unwrap();
    let out = dir.join("out-vendor-v4");
    run(Command::new("unpack_bootimg")
        .arg("--boot_img")
        .arg(&path)
        .arg("--out")
        .arg(&out));
    assert_eq!(
        std::fs::read(out.join("vendor_ramdisk")).unwrap(),
        v.concatenated_ramdisks()
    );
    assert_eq!(std::fs::read(out.join("dtb")).unwrap(), v.dtb);
    eprintln!("cross-check unpack_bootimg on our vendor_boot v4 (read as v3): same payloads: PASS");
}
