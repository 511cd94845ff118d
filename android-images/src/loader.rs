//! What a bootloader does with boot.img (+ vendor_boot.img, + init_boot.img) before jumping to
//! the kernel: pick the kernel, concatenate ramdisks, build the cmdline, append bootconfig.
//! The VMM calls [`load_android_boot`] for `--boot-img/--vendor-boot/--init-boot`.

use std::io::Read;
use std::path::Path;

use tracing::{debug, warn};

use crate::boot::BootImage;
use crate::bootconfig::{append_trailer, extract_androidboot, BootConfig};
use crate::error::{invalid, io_err, ImageError, Result};
use crate::vendor_boot::VendorBootImage;

/// Largest image file [`load_android_boot`] reads by default: real boot images are tens of
/// MiB; the cap keeps a wrong path (a disk image) from being read into memory.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 512 << 20;

/// Choices a bootloader makes that the images do not dictate.
#[derive(Debug, Clone)]
pub struct AndroidBootOptions {
    /// Also put every bootconfig `androidboot.*` value on the kernel cmdline, for kernels
    /// built without CONFIG_BOOT_CONFIG (Debian's), as Android did before bootconfig.
    pub androidboot_on_cmdline: bool,
    /// Parameters the bootloader itself adds (e.g. `androidboot.slot_suffix`,
    /// `androidboot.serialno`); later entries win over the vendor image's.
    pub extra_bootconfig: Vec<(String, String)>,
    /// Refuse image files larger than this many bytes.
    pub max_image_size: u64,
}

impl Default for AndroidBootOptions {
    fn default() -> Self {
        Self {
            androidboot_on_cmdline: false,
            extra_bootconfig: Vec::new(),
            max_image_size: DEFAULT_MAX_IMAGE_SIZE,
        }
    }
}

/// Everything the VMM needs to start the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndroidBootPayload {
    /// The kernel image (bzImage on x86-64), loaded as with `--kernel`.
    pub kernel: Vec<u8>,
    /// The initrd: vendor ramdisk(s), then the generic ramdisk, then (v4 with vendor_boot)
    /// the bootconfig trailer. Loaded as with `--initrd`.
    pub initrd: Vec<u8>,
    /// Kernel cmdline: vendor cmdline, boot cmdline, then (optionally) `androidboot.*`.
    pub cmdline: String,
    /// The bootconfig appended to `initrd` (empty when none was appended).
    pub bootconfig: BootConfig,
    /// The boot image header version that was booted.
    pub boot_header_version: u32,
}

/// Reads and assembles boot.img (+ vendor_boot, + init_boot) from files. See
/// [`assemble_android_boot`] for the rules; errors name the file and the field at fault.
pub fn load_android_boot(
    boot: &Path,
    vendor_boot: Option<&Path>,
    init_boot: Option<&Path>,
    opts: &AndroidBootOptions,
) -> Result<AndroidBootPayload> {
    let boot_img = parse_file(boot, opts.max_image_size, BootImage::parse)?;
    let vendor = vendor_boot
        .map(|p| parse_file(p, opts.max_image_size, VendorBootImage::parse))
        .transpose()?;
    let init = init_boot
        .map(|p| parse_file(p, opts.max_image_size, BootImage::parse))
        .transpose()?;
    assemble_android_boot(&boot_img, vendor.as_ref(), init.as_ref(), opts)
}

/// Reads a file of at most `max` bytes (checked before reading) and parses it; parse errors
/// are prefixed with the path.
pub fn parse_file<T>(path: &Path, max: u64, parse: impl Fn(&[u8]) -> Result<T>) -> Result<T> {
    let buf = read_capped(path, max)?;
    parse(&buf).map_err(|e| ImageError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Reads a whole file, refusing files larger than `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len > max {
        return Err(invalid(
            path.display().to_string(),
            format!("{len} bytes"),
            format!("larger than the {max}-byte limit"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > max {
        return Err(invalid(
            path.display().to_string(),
            "growing file",
            format!("larger than the {max}-byte limit"),
        ));
    }
    Ok(buf)
}

/// Joins cmdline fragments with single spaces, skipping empty ones.
fn join_words<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Assembles the boot payload exactly as an Android bootloader does:
/// - the kernel comes from boot.img (it must have one);
/// - initrd = vendor ramdisks (all table entries, in order) + generic ramdisk (init_boot's
///   when given, else boot.img's);
/// - cmdline = vendor cmdline + boot cmdline;
/// - boot v4 with vendor_boot v4: `androidboot.*` words move from the cmdline into the
///   bootconfig (as Cuttlefish does), joined with the vendor bootconfig section and
///   `opts.extra_bootconfig`, and the trailer is appended to the initrd;
/// - older pairs (v0-v3): bootloader parameters go on the cmdline, no bootconfig;
/// - `opts.androidboot_on_cmdline` also appends the bootconfig values to the cmdline.
pub fn assemble_android_boot(
    boot: &BootImage,
    vendor: Option<&VendorBootImage>,
    init_boot: Option<&BootImage>,
    opts: &AndroidBootOptions,
) -> Result<AndroidBootPayload> {
    if boot.kernel.is_empty() {
        return Err(invalid("boot.kernel_size", 0, "boot.img holds no kernel"));
    }
    if let Some(v) = vendor {
        if boot.header_version < 3 {
            return Err(invalid(
                "boot.header_version",
                boot.header_version,
                "vendor_boot needs a boot image of version 3 or 4",
            ));
        }
        debug!(
            vendor_version = v.header_version,
            ramdisks = v.ramdisks.len(),
            "vendor boot image"
        );
    }
    let generic = match init_boot {
        Some(init) => {
            if init.header_version < 3 {
                return Err(invalid(
                    "init_boot.header_version",
                    init.header_version,
                    "init_boot must be version 3 or 4",
                ));
            }
            if !boot.ramdisk.is_empty() {
                warn!("boot.img has a ramdisk but init_boot is given: using init_boot's");
            }
            &init.ramdisk
        }
        None => &boot.ramdisk,
    };
    let mut initrd = vendor
        .map(VendorBootImage::concatenated_ramdisks)
        .unwrap_or_default();
    initrd.extend_from_slice(generic);
    let mut cmdline = join_words([
        vendor.map_or("", |v| v.cmdline.as_str()),
        boot.cmdline.as_str(),
    ]);

    let mut extra = BootConfig::new();
    for (k, v) in &opts.extra_bootconfig {
        extra.set(k, v)?;
    }
    let use_bootconfig = boot.header_version >= 4 && vendor.is_some_and(|v| v.header_version >= 4);
    let mut bootconfig = BootConfig::new();
    if use_bootconfig {
        let (rest, moved) = extract_androidboot(&cmdline)?;
        cmdline = rest;
        let section = vendor.map(|v| v.bootconfig.as_slice()).unwrap_or_default();
        let text = std::str::from_utf8(section)
            .map_err(|_| invalid("vendor_boot.bootconfig", "section", "not UTF-8 text"))?;
        bootconfig = BootConfig::parse(text.trim_end_matches('\0'))?;
        bootconfig.merge(&moved);
        bootconfig.merge(&extra);
        append_trailer(&mut initrd, bootconfig.render()?.as_bytes())?;
        if opts.androidboot_on_cmdline {
            cmdline = join_words(
                std::iter::once(cmdline.as_str())
                    .chain(bootconfig.to_cmdline_words().iter().map(String::as_str)),
            );
        }
    } else {
        let words = extra.to_cmdline_words();
        cmdline =
            join_words(std::iter::once(cmdline.as_str()).chain(words.iter().map(String::as_str)));
    }
    Ok(AndroidBootPayload {
        kernel: boot.kernel.clone(),
        initrd,
        cmdline,
        bootconfig,
        boot_header_version: boot.header_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootconfig::split_trailer;
    use crate::vendor_boot::{VendorRamdisk, VendorRamdiskType};

    fn boot(version: u32, cmdline: &str) -> BootImage {
        let mut b = BootImage::new(version);
        b.kernel = b"KERNEL".to_vec();
        b.ramdisk = b"GENERIC".to_vec();
        b.cmdline = cmdline.into();
        b
    }

    fn vendor(version: u32) -> VendorBootImage {
        let mut v = VendorBootImage::new(version);
        v.cmdline = "vendor_opt=1".into();
        let kind = if version == 4 {
            VendorRamdiskType::Dlkm
        } else {
            VendorRamdiskType::None
        };
        let name = if version == 4 { "modules" } else { "" };
        v.ramdisks = vec![VendorRamdisk::new(kind, name, b"VENDOR".to_vec())];
        if version == 4 {
            v.ramdisks.insert(
                0,
                VendorRamdisk::new(VendorRamdiskType::Platform, "plat", b"PLAT".to_vec()),
            );
            v.bootconfig = b"androidboot.hardware = \"cloudphone\"\n".to_vec();
        }
        v
    }

    #[test]
    fn v4_boot_concatenates_and_appends_bootconfig() {
        let opts = AndroidBootOptions {
            extra_bootconfig: vec![("androidboot.slot_suffix".into(), "_a".into())],
            ..Default::default()
        };
        let p = assemble_android_boot(
            &boot(4, "console=hvc0 androidboot.x=1"),
            Some(&vendor(4)),
            None,
            &opts,
        )
        .unwrap();
        assert_eq!(p.kernel, b"KERNEL");
        assert_eq!(p.cmdline, "vendor_opt=1 console=hvc0");
        let (rd, data) = split_trailer(&p.initrd).unwrap().unwrap();
        assert_eq!(rd, b"PLATVENDORGENERIC");
        let text = String::from_utf8(data.to_vec()).unwrap();
        assert_eq!(
            text.trim_end_matches('\0'),
            "androidboot.hardware = \"cloudphone\"\nandroidboot.x = \"1\"\nandroidboot.slot_suffix = \"_a\"\n"
        );
    }

    #[test]
    fn androidboot_on_cmdline_for_kernels_without_bootconfig() {
        let opts = AndroidBootOptions {
            androidboot_on_cmdline: true,
            ..Default::default()
        };
        let p =
            assemble_android_boot(&boot(4, "console=hvc0"), Some(&vendor(4)), None, &opts).unwrap();
        assert_eq!(
            p.cmdline,
            "vendor_opt=1 console=hvc0 androidboot.hardware=cloudphone"
        );
        assert!(split_trailer(&p.initrd).unwrap().is_some());
    }

    #[test]
    fn init_boot_supplies_the_generic_ramdisk() {
        let mut init = BootImage::new(4);
        init.ramdisk = b"INIT".to_vec();
        let mut b = boot(4, "");
        b.ramdisk.clear();
        let p =
            assemble_android_boot(&b, Some(&vendor(4)), Some(&init), &Default::default()).unwrap();
        assert_eq!(
            split_trailer(&p.initrd).unwrap().unwrap().0,
            b"PLATVENDORINIT"
        );
    }

    #[test]
    fn older_versions_keep_parameters_on_the_cmdline() {
        let opts = AndroidBootOptions {
            extra_bootconfig: vec![("androidboot.serialno".into(), "X1".into())],
            ..Default::default()
        };
        let p = assemble_android_boot(
            &boot(3, "console=ttyS0 androidboot.a=b"),
            Some(&vendor(3)),
            None,
            &opts,
        )
        .unwrap();
        assert_eq!(p.initrd, b"VENDORGENERIC");
        assert_eq!(
            p.cmdline,
            "vendor_opt=1 console=ttyS0 androidboot.a=b androidboot.serialno=X1"
        );
        let p = assemble_android_boot(&boot(0, "console=ttyS0"), None, None, &Default::default())
            .unwrap();
        assert_eq!(
            (p.initrd.as_slice(), p.cmdline.as_str()),
            (&b"GENERIC"[..], "console=ttyS0")
        );
    }

    #[test]
    fn inconsistent_inputs_are_errors() {
        let e = assemble_android_boot(&boot(2, ""), Some(&vendor(3)), None, &Default::default())
            .unwrap_err();
        assert!(e.to_string().contains("boot.header_version = 2"));
        let mut b = boot(4, "");
        b.kernel.clear();
        assert!(assemble_android_boot(&b, None, None, &Default::default())
            .unwrap_err()
            .to_string()
            .contains("kernel_size = 0"));
    }

    #[test]
    fn files_are_capped_and_named() {
        let dir =
            std::env::temp_dir().join(format!("android-images-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("boot.img");
        std::fs::write(&path, boot(4, "c").to_bytes().unwrap()).unwrap();
        let opts = AndroidBootOptions {
            max_image_size: 100,
            ..Default::default()
        };
        assert!(load_android_boot(&path, None, None, &opts)
            .unwrap_err()
            .to_string()
            .contains("limit"));
        let p = load_android_boot(&path, None, None, &Default::default()).unwrap();
        assert_eq!(p.cmdline, "c");
        let missing =
            load_android_boot(&dir.join("nope.img"), None, None, &Default::default()).unwrap_err();
        assert!(missing.to_string().contains("nope.img"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
