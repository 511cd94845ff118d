//! Command-line specs for the display devices: `--gpu width=W,height=H[,dpi=D]` and
//! `--input touch,keyboard`. Parsed here so the VMM's clap options and JSON config share one
//! validator with clear errors.

use std::str::FromStr;

/// Smallest accepted screen edge in pixels: below this no phone UI is usable.
pub const MIN_SCREEN_EDGE: u32 = 64;
/// Largest accepted screen edge: an EDID detailed timing stores 12 bits per dimension.
pub const MAX_SCREEN_EDGE: u32 = 4095;
/// Accepted dpi range (physical size in the EDID is derived from it).
pub const DPI_RANGE: std::ops::RangeInclusive<u32> = 72..=1000;
/// Cuttlefish's default phone density.
pub const DEFAULT_DPI: u32 = 320;

/// Why a `--gpu` or `--input` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A `key=value` item had no `=`.
    #[error("--gpu item '{0}' is not key=value (expected width=W,height=H[,dpi=D])")]
    NotKeyValue(String),
    /// A key other than width, height, dpi.
    #[error("--gpu has unknown key '{0}' (known: width, height, dpi)")]
    UnknownKey(String),
    /// The same key twice.
    #[error("--gpu sets '{0}' twice")]
    Duplicate(String),
    /// A value that is not a decimal number.
    #[error("--gpu {key}='{value}' is not a whole number")]
    NotANumber { key: String, value: String },
    /// width or height missing.
    #[error("--gpu needs {0}= (e.g. width=720,height=1280)")]
    Missing(&'static str),
    /// A value outside its accepted range.
    #[error("--gpu {key}={value} is out of range {min}..={max}")]
    OutOfRange {
        key: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    /// `--input` named something other than touch or keyboard.
    #[error("--input has unknown device '{0}' (known: touch, keyboard)")]
    UnknownInput(String),
}

/// The phone screen: scanout size in pixels and density (for the EDID's physical size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuSpec {
    /// Scanout width in pixels.
    pub width: u32,
    /// Scanout height in pixels.
    pub height: u32,
    /// Dots per inch.
    pub dpi: u32,
}

impl GpuSpec {
    /// Physical size in millimetres (width, height), rounded, at least 1.
    pub fn size_mm(&self) -> (u32, u32) {
        let mm = |px: u32| {
            ((u64::from(px) * 254 + u64::from(self.dpi) * 5) / (u64::from(self.dpi) * 10)).max(1)
                as u32
        };
        (mm(self.width), mm(self.height))
    }

    /// Bytes of one 32-bit-per-pixel frame at this size.
    pub fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 4
    }
}

fn check_range(
    key: &'static str,
    value: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, SpecError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(SpecError::OutOfRange {
            key,
            value,
            min: *range.start(),
            max: *range.end(),
        })
    }
}

impl FromStr for GpuSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (mut width, mut height, mut dpi) = (None, None, None);
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| SpecError::NotKeyValue(item.to_string()))?;
            let slot = match key {
                "width" => &mut width,
                "height" => &mut height,
                "dpi" => &mut dpi,
                other => return Err(SpecError::UnknownKey(other.to_string())),
            };
            if slot.is_some() {
                return Err(SpecError::Duplicate(key.to_string()));
            }
            let number = value.parse::<u32>().map_err(|_| SpecError::NotANumber {
                key: key.to_string(),
                value: value.to_string(),
            })?;
            *slot = Some(number);
        }
        let edge = MIN_SCREEN_EDGE..=MAX_SCREEN_EDGE;
        Ok(GpuSpec {
            width: check_range(
                "width",
                width.ok_or(SpecError::Missing("width"))?,
                edge.clone(),
            )?,
            height: check_range("height", height.ok_or(SpecError::Missing("height"))?, edge)?,
            dpi: check_range("dpi", dpi.unwrap_or(DEFAULT_DPI), DPI_RANGE)?,
        })
    }
}

/// Which virtio-input devices the phone gets (`--input touch,keyboard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputSpec {
    /// A multitouch screen matching the GPU scanout.
    pub touch: bool,
    /// A keyboard with the phone keys.
    pub keyboard: bool,
}

impl FromStr for InputSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let mut spec = InputSpec::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "touch" => spec.touch = true,
                "keyboard" => spec.keyboard = true,
                other => return Err(SpecError::UnknownInput(other.to_string())),
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_default_dpi() {
        let s: GpuSpec = "width=720,height=1280,dpi=320".parse().unwrap();
        assert_eq!(
            s,
            GpuSpec {
                width: 720,
                height: 1280,
                dpi: 320
            }
        );
        let s: GpuSpec = "height=1920, width=1080".parse().unwrap();
        assert_eq!((s.width, s.height, s.dpi), (1080, 1920, DEFAULT_DPI));
    }

    #[test]
    fn physical_size_follows_dpi() {
        let s: GpuSpec = "width=720,height=1280,dpi=320".parse().unwrap();
        // 720 px / 320 dpi = 2.25 in = 57.15 mm; 1280 px = 101.6 mm.
        assert_eq!(s.size_mm(), (57, 102));
    }

    #[test]
    fn rejects_bad_specs_with_named_errors() {
        let err = |s: &str| s.parse::<GpuSpec>().unwrap_err();
        assert_eq!(err("width=720"), SpecError::Missing("height"));
        assert_eq!(
            err("width=720,height=1280,depth=3"),
            SpecError::UnknownKey("depth".into())
        );
        assert_eq!(
            err("width=720,width=1,height=2"),
            SpecError::Duplicate("width".into())
        );
        assert!(matches!(
            err("width=abc,height=1"),
            SpecError::NotANumber { .. }
        ));
        assert!(matches!(
            err("width=-1,height=1"),
            SpecError::NotANumber { .. }
        ));
        assert!(matches!(
            err("width=99999,height=1280"),
            SpecError::OutOfRange { key: "width", .. }
        ));
        assert!(matches!(
            err("width=720,height=1280,dpi=5"),
            SpecError::OutOfRange { key: "dpi", .. }
        ));
        assert_eq!(err("720x1280"), SpecError::NotKeyValue("720x1280".into()));
        assert!(err("width=720,height=1").to_string().contains("height=1"));
    }

    #[test]
    fn input_spec() {
        let s: InputSpec = "touch,keyboard".parse().unwrap();
        assert!(s.touch && s.keyboard);
        assert_eq!(
            "mouse".parse::<InputSpec>(),
            Err(SpecError::UnknownInput("mouse".into()))
        );
    }
}
