//! Ethernet MAC addresses: parsed from the command line or derived from a per-phone seed, so
//! every phone on a bridge has a stable, distinct address.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address, as the guest sees it in virtio-net config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MacParseError {
    /// Not six `:`-separated two-digit hex octets.
    #[error("MAC address {0:?} is not six ':'-separated hex octets (example: 52:54:00:12:34:56)")]
    Format(String),
    /// Multicast addresses cannot be assigned to an interface.
    #[error("MAC address {0} is multicast (lowest bit of the first octet set); use a unicast address such as 52:54:00:12:34:56")]
    Multicast(MacAddr),
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (e.g. the phone id or tap
    /// name): the same seed always gives the same address, different seeds almost surely differ.
    pub fn from_seed(seed: &str) -> Self {
        // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = hash.to_be_bytes();
        // Locally administered (bit 1 set), unicast (bit 0 clear).
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    /// Whether the address is a group (multicast/broadcast) address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let format_err = || MacParseError::Format(s.to_string());
        let mut octets = [0u8; 6];
        let mut parts = s.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(format_err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format_err());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| format_err())?;
        }
        if parts.next().is_some() {
            return Err(format_err());
        }
        let mac = MacAddr(octets);
        if mac.is_multicast() {
            return Err(MacParseError::Multicast(mac));
        }
        Ok(mac)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prop_assert_eq;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.0, [0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f]);
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5254:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
            "2:54:00:ab:cd:0f1",
            "+2:54:00:ab:cd:0f",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(MacParseError::Format(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "01:00:5e:00:00:01".parse::<MacAddr>(),
            Err(MacParseError::Multicast(_))
        ));
    }

    #[test]
    fn seeded_macs_are_stable_local_unicast_and_distinct() {
        let a = MacAddr::from_seed("phone-1");
        assert_eq!(a, MacAddr::from_seed("phone-1"));
        assert_ne!(a, MacAddr::from_seed("phone-2"));
        assert_eq!(a.0[0] & 0x03, 0x02);
    }

    #[test]
    fn fuzz_mac_parse() {
        crate::testutil::fuzz("mac_parse", 2048, "[0-9a-fA-F:xz+]{0,24}", |s: String| {
            if let Ok(mac) = s.parse::<MacAddr>() {
                prop_assert_eq!(mac.to_string(), s.to_ascii_lowercase());
            }
            Ok(())
        });
    }
}
