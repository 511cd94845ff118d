//! The packed `os_version` header field: `(A << 14 | B << 7 | C) << 11 | (Y - 2000) << 4 | M`,
//! as AOSP's mkbootimg writes it (version A.B.C, security patch level Y-M).

use crate::error::{invalid, Result};

/// OS version and security patch level, stored packed exactly as the header holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct OsVersion(pub u32);

impl OsVersion {
    /// Packs version `a.b.c` (each < 128) and patch level `year-month`
    /// (2000..=2127, 1..=12; year 0 and month 0 mean "unset").
    pub fn new(a: u32, b: u32, c: u32, year: u32, month: u32) -> Result<Self> {
        for (name, v) in [("major", a), ("minor", b), ("patch", c)] {
            if v >= 128 {
                return Err(invalid(
                    format!("os_version.{name}"),
                    v,
                    "must be below 128",
                ));
            }
        }
        let level = if year == 0 && month == 0 {
            0
        } else {
            if !(2000..2128).contains(&year) {
                return Err(invalid(
                    "os_patch_level.year",
                    year,
                    "must be within 2000..=2127",
                ));
            }
            if !(1..=12).contains(&month) {
                return Err(invalid(
                    "os_patch_level.month",
                    month,
                    "must be within 1..=12",
                ));
            }
            (year - 2000) << 4 | month
        };
        Ok(Self(((a << 14) | (b << 7) | c) << 11 | level))
    }

    /// Parses the mkbootimg spellings: `"13.0.0"` (or `"13"`, `"13.1"`) and `"2023-05"`
    /// (or `"2023-05-05"`); an empty string leaves that half unset.
    pub fn parse(version: &str, patch_level: &str) -> Result<Self> {
        let num = |field: &str, s: &str| {
            s.parse::<u32>()
                .map_err(|_| invalid(field, s, "not a decimal number"))
        };
        let mut parts = [0u32; 3];
        if !version.is_empty() {
            let split: Vec<&str> = version.split('.').collect();
            if split.len() > 3 {
                return Err(invalid("os_version", version, "expected A[.B[.C]]"));
            }
            for (slot, s) in parts.iter_mut().zip(&split) {
                *slot = num("os_version", s)?;
            }
        }
        let (mut year, mut month) = (0, 0);
        if !patch_level.is_empty() {
            let split: Vec<&str> = patch_level.split('-').collect();
            if !(2..=3).contains(&split.len()) {
                return Err(invalid(
                    "os_patch_level",
                    patch_level,
                    "expected YYYY-MM[-DD]",
                ));
            }
            year = num("os_patch_level", split[0])?;
            month = num("os_patch_level", split[1])?;
        }
        Self::new(parts[0], parts[1], parts[2], year, month)
    }

    /// The `(a, b, c)` version triple.
    pub fn version(self) -> (u32, u32, u32) {
        let v = self.0 >> 11;
        (v >> 14, (v >> 7) & 0x7f, v & 0x7f)
    }

    /// The `(year, month)` patch level; `(2000, 0)`-style values are returned as stored.
    pub fn patch_level(self) -> (u32, u32) {
        let p = self.0 & 0x7ff;
        ((p >> 4) + 2000, p & 0xf)
    }
}

impl std::fmt::Display for OsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b, c) = self.version();
        let (y, m) = self.patch_level();
        write!(f, "{a}.{b}.{c} (patch level {y:04}-{m:02})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_like_mkbootimg() {
        // mkbootimg --os_version 11.2.3 --os_patch_level 2021-06:
        // (11<<14 | 2<<7 | 3) = 180483; << 11 = 369629184; level = 21<<4 | 6 = 342.
        let v = OsVersion::parse("11.2.3", "2021-06").unwrap();
        assert_eq!(v.0, 369_629_184 + 342);
        assert_eq!(v.version(), (11, 2, 3));
        assert_eq!(v.patch_level(), (2021, 6));
        assert_eq!(OsVersion::parse("", "").unwrap().0, 0);
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(OsVersion::new(128, 0, 0, 0, 0)
            .unwrap_err()
            .to_string()
            .contains("major = 128"));
        assert!(OsVersion::new(1, 0, 0, 2021, 13).is_err());
        assert!(OsVersion::new(1, 0, 0, 1999, 1).is_err());
        assert!(OsVersion::parse("1.2.3.4", "").is_err());
        assert!(OsVersion::parse("x", "").is_err());
    }
}
