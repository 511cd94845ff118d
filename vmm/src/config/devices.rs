//! The optional virtio devices (`--gpu`, `--input`, `--disk`, `--net`, `--vsock`, `--balloon`):
//! their option strings parsed by the device crates' own parsers and checked in combination.

use cloudphone_block::DiskSpec;
use cloudphone_display::{GpuSpec, InputSpec};
use cloudphone_net::{NetSpec, VsockSpec};

use super::ConfigError;
use crate::pci::slots;

/// Most `--disk` options: one PCI slot each, from 00:10.0 to 00:1f.0.
pub const MAX_DISKS: usize = 32 - slots::FIRST_BLOCK as usize;

/// Validated device options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceConfig {
    /// virtio-gpu at 00:02.0.
    pub gpu: Option<GpuSpec>,
    /// virtio-input touchscreen (00:03.0) and/or keyboard (00:04.0).
    pub input: Option<InputSpec>,
    /// virtio-blk, one per disk, at 00:10.0 + index.
    pub disks: Vec<DiskSpec>,
    /// virtio-net at 00:08.0.
    pub net: Option<NetSpec>,
    /// virtio-vsock at 00:06.0.
    pub vsock: Option<VsockSpec>,
    /// virtio-balloon at 00:07.0.
    pub balloon: bool,
    /// Where the GPU's framebuffer file goes (`/dev/shm`; the jail's shm directory when jailed).
    pub framebuffer_dir: cloudphone_display::ExportDir,
}

/// The raw option strings [`DeviceConfig::parse`] reads.
pub struct DeviceArgs<'a> {
    /// `--gpu`.
    pub gpu: Option<&'a str>,
    /// `--input`.
    pub input: Option<&'a str>,
    /// `--disk` (repeatable).
    pub disk: &'a [String],
    /// `--net` (one; the fixed layout has one net slot).
    pub net: &'a [String],
    /// `--vsock`.
    pub vsock: Option<&'a str>,
    /// `--balloon`.
    pub balloon: bool,
}

fn parse_opt<T, E: std::fmt::Display>(
    option: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    parse(value).map_err(|e| {
        let msg = e.to_string();
        // The crates' messages usually name the option already; add it where they do not.
        if msg.contains(option) {
            ConfigError(format!("{msg} (got {value:?})"))
        } else {
            ConfigError(format!("{option} {value:?}: {msg}"))
        }
    })
}

impl DeviceConfig {
    /// Parse and cross-check the device options.
    pub fn parse(args: DeviceArgs<'_>) -> Result<Self, ConfigError> {
        let gpu = args
            .gpu
            .map(|s| parse_opt("--gpu", s, str::parse::<GpuSpec>))
            .transpose()?;
        let input = args
            .input
            .map(|s| parse_opt("--input", s, str::parse::<InputSpec>))
            .transpose()?;
        if let Some(spec) = input {
            if !spec.touch && !spec.keyboard {
                return Err(ConfigError(
                    "--input names no device: use touch, keyboard or touch,keyboard".into(),
                ));
            }
            if spec.touch && gpu.is_none() {
                return Err(ConfigError(
                    "--input touch needs --gpu width=W,height=H (the touchscreen matches the screen size)"
                        .into(),
                ));
            }
        }
        if args.disk.len() > MAX_DISKS {
            return Err(ConfigError(format!(
                "{} --disk options; at most {MAX_DISKS} fit the PCI layout",
                args.disk.len()
            )));
        }
        let disks = args
            .disk
            .iter()
            .map(|s| parse_opt("--disk", s, str::parse::<DiskSpec>))
            .collect::<Result<Vec<_>, _>>()?;
        let net = match args.net {
            [] => None,
            [one] => Some(parse_opt("--net", one, str::parse::<NetSpec>)?),
            more => {
                return Err(ConfigError(format!(
                    "{} --net options; a phone has one network device (PCI 00:08.0): pass one",
                    more.len()
                )))
            }
        };
        let vsock = args
            .vsock
            .map(|s| parse_opt("--vsock", s, str::parse::<VsockSpec>))
            .transpose()?;
        Ok(Self {
            gpu,
            input,
            disks,
            net,
            vsock,
            balloon: args.balloon,
            framebuffer_dir: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(disk: &'a [String], net: &'a [String]) -> DeviceArgs<'a> {
        DeviceArgs {
            gpu: None,
            input: None,
            disk,
            net,
            vsock: None,
            balloon: false,
        }
    }

    #[test]
    fn parses_every_device() {
        let disk = vec![
            "/a.img,ro".to_string(),
            "/b.img,overlay=/b.qcow2,id=data".into(),
        ];
        let net = vec!["tap=phone0,mac=52:54:00:12:34:56".to_string()];
        let c = DeviceConfig::parse(DeviceArgs {
            gpu: Some("width=720,height=1280"),
            input: Some("touch,keyboard"),
            vsock: Some("cid=3,uds=/tmp/v.sock"),
            balloon: true,
            ..args(&disk, &net)
        })
        .unwrap();
        let gpu = c.gpu.unwrap();
        assert_eq!((gpu.width, gpu.height), (720, 1280));
        assert_eq!(
            c.input,
            Some(InputSpec {
                touch: true,
                keyboard: true
            })
        );
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[0].read_only);
        assert_eq!(c.disks[1].id.as_deref(), Some("data"));
        assert_eq!(c.net.unwrap().tap, "phone0");
        assert_eq!(c.vsock.unwrap().cid, 3);
        assert!(c.balloon);
        assert_eq!(
            DeviceConfig::parse(args(&[], &[])).unwrap(),
            DeviceConfig::default()
        );
    }

    #[test]
    fn keyboard_alone_needs_no_gpu() {
        let c = DeviceConfig::parse(DeviceArgs {
            input: Some("keyboard"),
            ..args(&[], &[])
        })
        .unwrap();
        assert!(c.input.unwrap().keyboard);
    }

    #[test]
    fn rejects_with_the_option_named() {
        let one = |gpu: Option<&str>, input: Option<&str>, vsock: Option<&str>| {
            DeviceConfig::parse(DeviceArgs {
                gpu,
                input,
                vsock,
                ..args(&[], &[])
            })
            .unwrap_err()
            .to_string()
        };
        assert!(one(Some("width=1"), None, None).contains("--gpu"));
        assert!(one(Some("width=720"), None, None).contains("height"));
        assert!(one(Some("width=720,height=1280,x=1"), None, None).contains("--gpu"));
        assert!(one(None, Some("touch"), None).contains("--gpu"));
        assert!(one(None, Some("mouse"), None).contains("--input"));
        assert!(one(None, Some(","), None).contains("--input"));
        assert!(one(None, None, Some("cid=1,uds=/x")).contains("--vsock"));
        assert!(one(None, None, Some("uds=/x")).contains("--vsock"));
        let e = |disk: &[String], net: &[String]| {
            DeviceConfig::parse(args(disk, net))
                .unwrap_err()
                .to_string()
        };
        assert!(e(&[",ro".into()], &[]).contains("--disk"));
        assert!(e(&["/a,bogus".into()], &[]).contains("--disk"));
        let many: Vec<String> = (0..=MAX_DISKS).map(|i| format!("/d{i}")).collect();
        assert!(e(&many, &[]).contains("--disk"));
        assert!(e(&[], &["mac=52:54:00:00:00:01".into()]).contains("--net"));
        assert!(e(&[], &["tap=a".into(), "tap=b".into()]).contains("--net"));
        assert!(e(&[], &["tap=a/b".into()]).contains("--net"));
    }
}
