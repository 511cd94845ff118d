//! `--net tap=NAME[,mac=..]`: which TAP interface a phone uses and its MAC address.

use std::str::FromStr;

use crate::mac::{MacAddr, MacParseError};

/// Longest interface name Linux accepts (IFNAMSIZ minus the NUL).
const MAX_IFNAME_LEN: usize = 15;

/// A parsed `--net` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// TAP interface name (created if missing, needs CAP_NET_ADMIN then).
    pub tap: String,
    /// MAC address given on the command line, if any.
    pub mac: Option<MacAddr>,
}

/// Why a `--net` option was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetSpecError {
    /// `tap=NAME` is required.
    #[error("--net needs tap=NAME (example: --net tap=phone0,mac=52:54:00:12:34:56)")]
    MissingTap,
    /// The interface name is not one Linux accepts.
    #[error("--net tap={0:?}: interface names are 1-15 bytes without '/', ':' or whitespace and not '.' or '..'")]
    BadTapName(String),
    /// An item other than `tap=` / `mac=`.
    #[error("--net: unknown item {0:?}; accepted: tap=NAME, mac=XX:XX:XX:XX:XX:XX")]
    UnknownItem(String),
    /// The same key twice.
    #[error("--net: {0}= given twice")]
    Duplicate(&'static str),
    /// `mac=` did not parse.
    #[error("--net: {0}")]
    Mac(#[from] MacParseError),
}

impl NetSpec {
    /// The MAC the guest gets: the one given, else one derived from the TAP name, so a phone
    /// keeps its address across restarts and phones on one bridge differ.
    pub fn mac_or_derived(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| MacAddr::from_seed(&self.tap))
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

impl FromStr for NetSpec {
    type Err = NetSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("tap", name)) => {
                    if tap.is_some() {
                        return Err(NetSpecError::Duplicate("tap"));
                    }
                    if !valid_ifname(name) {
                        return Err(NetSpecError::BadTapName(name.to_string()));
                    }
                    tap = Some(name.to_string());
                }
                Some(("mac", value)) => {
                    if mac.is_some() {
                        return Err(NetSpecError::Duplicate("mac"));
                    }
                    mac = Some(value.parse()?);
                }
                _ => return Err(NetSpecError::UnknownItem(item.to_string())),
            }
        }
        Ok(NetSpec {
            tap: tap.ok_or(NetSpecError::MissingTap)?,
            mac,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let spec: NetSpec = "tap=phone0,mac=52:54:00:00:00:01".parse().unwrap();
        assert_eq!(spec.tap, "phone0");
        assert_eq!(spec.mac_or_derived().to_string(), "52:54:00:00:00:01");
        let spec: NetSpec = "tap=phone1".parse().unwrap();
        assert_eq!(spec.mac, None);
        assert_eq!(spec.mac_or_derived(), MacAddr::from_seed("phone1"));
    }

    #[test]
    fn rejects_bad_specs_with_named_errors() {
        let err = |s: &str| s.parse::<NetSpec>().unwrap_err();
        assert_eq!(err("mac=52:54:00:00:00:01"), NetSpecError::MissingTap);
        assert_eq!(err(""), NetSpecError::UnknownItem(String::new()));
        assert_eq!(err("tap=a,tap=b"), NetSpecError::Duplicate("tap"));
        assert_eq!(
            err("tap=averyveryverylongname"),
            NetSpecError::BadTapName("averyveryverylongname".into())
        );
        assert_eq!(err("tap=a/b"), NetSpecError::BadTapName("a/b".into()));
        assert_eq!(err("tap=.."), NetSpecError::BadTapName("..".into()));
        assert_eq!(
            err("tap=x,vhost=on"),
            NetSpecError::UnknownItem("vhost=on".into())
        );
        assert!(matches!(
            err("tap=x,mac=ff:ff:ff:ff:ff:ff"),
            NetSpecError::Mac(_)
        ));
        assert!(err("tap=x,mac=1").to_string().contains("example"));
    }

    #[test]
    fn fuzz_net_spec() {
        crate::testutil::fuzz(
            "net_spec",
            2048,
            "(tap|mac|x)=[a-z0-9:./ ]{0,20}(,(tap|mac)=[0-9a-f:]{0,18}){0,2}",
            |s: String| {
                if let Ok(spec) = s.parse::<NetSpec>() {
                    proptest::prop_assert!(valid_ifname(&spec.tap));
                    proptest::prop_assert!(!spec.mac_or_derived().is_multicast());
                }
                Ok(())
            },
        );
    }
}
