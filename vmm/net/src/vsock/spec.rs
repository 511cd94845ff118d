//! `--vsock cid=N,uds=PATH`: the guest's vsock address and the host Unix socket behind it.

use std::path::PathBuf;
use std::str::FromStr;

/// First CID a guest may use (0, 1 and 2 are reserved: hypervisor, local, host).
const MIN_GUEST_CID: u64 = 3;
/// Largest usable CID (`u32::MAX` is VMADDR_CID_ANY; Linux keeps CIDs in 32 bits).
const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;
/// sockaddr_un paths hold 107 bytes; `uds_<port>` must fit too, so leave room for the suffix.
const MAX_UDS_LEN: usize = 107 - 11;

/// A parsed `--vsock` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockSpec {
    /// The guest's context ID.
    pub cid: u64,
    /// Host Unix socket: host programs connect here; guest connections to host port P go to
    /// `<uds>_<P>`.
    pub uds: PathBuf,
}

/// Why a `--vsock` option was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VsockSpecError {
    /// A required key is absent.
    #[error("--vsock needs {0}= (example: --vsock cid=3,uds=/run/phone0/vsock.sock)")]
    Missing(&'static str),
    /// `cid=` is not a number in the guest range.
    #[error("--vsock cid={0:?}: must be a number from 3 to 4294967294 (0-2 are reserved)")]
    BadCid(String),
    /// `uds=` is empty or too long for a Unix socket address.
    #[error("--vsock uds={0:?}: must be a non-empty path of at most 96 bytes (Unix socket paths are short)")]
    BadUds(String),
    /// An item other than `cid=` / `uds=`.
    #[error("--vsock: unknown item {0:?}; accepted: cid=N, uds=PATH")]
    UnknownItem(String),
    /// The same key twice.
    #[error("--vsock: {0}= given twice")]
    Duplicate(&'static str),
}

impl FromStr for VsockSpec {
    type Err = VsockSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut cid = None;
        let mut uds = None;
        for item in s.split(',') {
            match item.split_once('=') {
                Some(("cid", value)) => {
                    if cid.is_some() {
                        return Err(VsockSpecError::Duplicate("cid"));
                    }
                    let n = value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (MIN_GUEST_CID..=MAX_GUEST_CID).contains(n))
                        .ok_or_else(|| VsockSpecError::BadCid(value.to_string()))?;
                    cid = Some(n);
                }
                Some(("uds", path)) => {
                    if uds.is_some() {
                        return Err(VsockSpecError::Duplicate("uds"));
                    }
                    if path.is_empty() || path.len() > MAX_UDS_LEN || path.contains('\0') {
                        return Err(VsockSpecError::BadUds(path.to_string()));
                    }
                    uds = Some(PathBuf::from(path));
                }
                _ => return Err(VsockSpecError::UnknownItem(item.to_string())),
            }
        }
        Ok(VsockSpec {
            cid: cid.ok_or(VsockSpecError::Missing("cid"))?,
            uds: uds.ok_or(VsockSpecError::Missing("uds"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cid_and_uds() {
        let spec: VsockSpec = "cid=3,uds=/run/p0/v.sock".parse().unwrap();
        assert_eq!(
            spec,
            VsockSpec {
                cid: 3,
                uds: "/run/p0/v.sock".into()
            }
        );
        let spec: VsockSpec = "uds=x,cid=4294967294".parse().unwrap();
        assert_eq!(spec.cid, 4294967294);
    }

    #[test]
    fn rejects_bad_specs_with_named_errors() {
        let err = |s: &str| s.parse::<VsockSpec>().unwrap_err();
        assert_eq!(err("uds=/x"), VsockSpecError::Missing("cid"));
        assert_eq!(err("cid=3"), VsockSpecError::Missing("uds"));
        for bad in ["2", "0", "-1", "4294967295", "x", ""] {
            assert_eq!(
                err(&format!("cid={bad},uds=/x")),
                VsockSpecError::BadCid(bad.into())
            );
        }
        assert_eq!(err("cid=3,uds="), VsockSpecError::BadUds(String::new()));
        assert!(matches!(
            err(&format!("cid=3,uds=/{}", "a".repeat(100))),
            VsockSpecError::BadUds(_)
        ));
        assert_eq!(err("cid=3,cid=4,uds=/x"), VsockSpecError::Duplicate("cid"));
        assert_eq!(
            err("cid=3,uds=/x,port=1"),
            VsockSpecError::UnknownItem("port=1".into())
        );
    }

    #[test]
    fn fuzz_vsock_spec() {
        crate::testutil::fuzz(
            "vsock_spec",
            2048,
            "((cid|uds|x)=[0-9a-z/]{0,12},?){0,3}",
            |s: String| {
                if let Ok(spec) = s.parse::<VsockSpec>() {
                    proptest::prop_assert!(spec.cid >= 3 && spec.cid < u64::from(u32::MAX));
                    proptest::prop_assert!(!spec.uds.as_os_str().is_empty());
                }
                Ok(())
            },
        );
    }
}
