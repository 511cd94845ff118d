//! `build-boot`, `build-vendor-boot` and `assemble`.

use std::path::{Path, PathBuf};

use android_images::loader::{read_capped, DEFAULT_MAX_IMAGE_SIZE};
use android_images::vendor_boot::{VendorRamdisk, VendorRamdiskType};
use android_images::{
    load_android_boot, AndroidBootOptions, BootConfig, BootImage, LoadAddresses, OsVersion,
    VendorBootImage,
};
use anyhow::{bail, Context, Result};
use clap::Args;

/// Options of `build-boot` (mkbootimg's, spelled with dashes).
#[derive(Args)]
pub struct BootArgs {
    /// Header version 0..=4.
    #[arg(long, default_value_t = 4)]
    header_version: u32,
    /// Kernel image.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Ramdisk (the generic ramdisk for v3/v4).
    #[arg(long)]
    ramdisk: Option<PathBuf>,
    /// Second stage (v0-v2).
    #[arg(long)]
    second: Option<PathBuf>,
    /// Recovery DTBO/ACPIO (v1, v2).
    #[arg(long)]
    recovery_dtbo: Option<PathBuf>,
    /// DTB (v2).
    #[arg(long)]
    dtb: Option<PathBuf>,
    /// Boot signature blob (v4).
    #[arg(long)]
    signature: Option<PathBuf>,
    /// Kernel cmdline.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Board name (v0-v2).
    #[arg(long, default_value = "")]
    board: String,
    /// Page size (v0-v2; v3/v4 use 4096).
    #[arg(long, default_value_t = 2048)]
    pagesize: u32,
    /// OS version A.B.C.
    #[arg(long, default_value = "")]
    os_version: String,
    /// Security patch level YYYY-MM.
    #[arg(long, default_value = "")]
    os_patch_level: String,
    /// Output file.
    #[arg(short, long)]
    out: PathBuf,
}

fn read_opt(path: &Option<PathBuf>) -> Result<Vec<u8>> {
    match path {
        Some(p) => Ok(read_capped(p, DEFAULT_MAX_IMAGE_SIZE)?),
        None => Ok(Vec::new()),
    }
}

fn write_out(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

/// Builds a boot image from files.
pub fn build_boot(a: &BootArgs) -> Result<()> {
    let mut img = BootImage::new(a.header_version);
    if a.header_version < 3 {
        img.page_size = a.pagesize;
    }
    img.kernel = read_opt(&a.kernel)?;
    img.ramdisk = read_opt(&a.ramdisk)?;
    img.second = read_opt(&a.second)?;
    img.recovery_dtbo = read_opt(&a.recovery_dtbo)?;
    img.dtb = read_opt(&a.dtb)?;
    img.signature = read_opt(&a.signature)?;
    img.cmdline = a.cmdline.clone();
    img.board_name = a.board.clone();
    img.os_version = OsVersion::parse(&a.os_version, &a.os_patch_level)?;
    img.apply_load_addresses(&LoadAddresses::default())?;
    write_out(&a.out, &img.to_bytes()?)
}

/// Options of `build-vendor-boot`.
#[derive(Args)]
pub struct VendorArgs {
    /// Header version 3 or 4.
    #[arg(long, default_value_t = 4)]
    header_version: u32,
    /// A vendor ramdisk as TYPE:NAME:PATH (TYPE none|platform|recovery|dlkm); repeatable, in
    /// order. For v3 give one, as none::PATH.
    #[arg(long = "ramdisk")]
    ramdisks: Vec<String>,
    /// Device tree blob.
    #[arg(long)]
    dtb: Option<PathBuf>,
    /// Vendor cmdline.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Bootconfig text file (v4).
    #[arg(long)]
    bootconfig: Option<PathBuf>,
    /// A bootconfig parameter KEY=VALUE (v4); repeatable, added after --bootconfig's.
    #[arg(long = "bootconfig-param")]
    bootconfig_params: Vec<String>,
    /// Board name.
    #[arg(long, default_value = "")]
    board: String,
    /// Page size.
    #[arg(long, default_value_t = 4096)]
    pagesize: u32,
    /// Output file.
    #[arg(short, long)]
    out: PathBuf,
}

/// Builds a vendor boot image from files.
pub fn build_vendor_boot(a: &VendorArgs) -> Result<()> {
    let mut img = VendorBootImage::new(a.header_version);
    img.page_size = a.pagesize;
    img.cmdline = a.cmdline.clone();
    img.board_name = a.board.clone();
    img.dtb = read_opt(&a.dtb)?;
    for spec in &a.ramdisks {
        let mut parts = spec.splitn(3, ':');
        let (Some(kind), Some(name), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("--ramdisk {spec}: expected TYPE:NAME:PATH");
        };
        let data = read_capped(Path::new(path), DEFAULT_MAX_IMAGE_SIZE)?;
        img.ramdisks.push(VendorRamdisk::new(
            VendorRamdiskType::parse(kind)?,
            name,
            data,
        ));
    }
    let mut config = match &a.bootconfig {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            BootConfig::parse(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => BootConfig::new(),
    };
    for kv in &a.bootconfig_params {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--bootconfig-param {kv}: expected KEY=VALUE")
        };
        config.set(k, v)?;
    }
    img.bootconfig = config.render()?.into_bytes();
    write_out(&a.out, &img.to_bytes()?)
}

/// Options of `assemble`.
#[derive(Args)]
pub struct AssembleArgs {
    /// boot.img.
    #[arg(long)]
    boot: PathBuf,
    /// vendor_boot.img.
    #[arg(long)]
    vendor_boot: Option<PathBuf>,
    /// init_boot.img.
    #[arg(long)]
    init_boot: Option<PathBuf>,
    /// Also put androidboot.* on the cmdline (kernels without CONFIG_BOOT_CONFIG).
    #[arg(long)]
    androidboot_on_cmdline: bool,
    /// Where to write the kernel.
    #[arg(long)]
    kernel_out: Option<PathBuf>,
    /// Where to write the initrd (with the bootconfig trailer).
    #[arg(long)]
    initrd_out: Option<PathBuf>,
}

/// Runs the bootloader logic and reports its result.
pub fn assemble(a: &AssembleArgs) -> Result<()> {
    let opts = AndroidBootOptions {
        androidboot_on_cmdline: a.androidboot_on_cmdline,
        ..Default::default()
    };
    let p = load_android_boot(
        &a.boot,
        a.vendor_boot.as_deref(),
        a.init_boot.as_deref(),
        &opts,
    )?;
    if let Some(path) = &a.kernel_out {
        write_out(path, &p.kernel)?;
    }
    if let Some(path) = &a.initrd_out {
        write_out(path, &p.initrd)?;
    }
    println!("boot header version: {}", p.boot_header_version);
    println!(
        "kernel: {} bytes, initrd: {} bytes",
        p.kernel.len(),
        p.initrd.len()
    );
    println!("cmdline: {}", p.cmdline);
    print!("bootconfig:\n{}", p.bootconfig.render()?);
    Ok(())
}
