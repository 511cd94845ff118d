//! The snapshot state file: a fixed header (magic, format version, payload length, CRC-32 of
//! the payload) followed by the JSON payload. The header lets a restore refuse a truncated,
//! corrupted or foreign file with a reason before it parses anything the file claims.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"CPHSNAP\0";
/// The state-file format this VMM writes and reads. Bump on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;
/// Header: magic, version (u32 LE), payload length (u64 LE), CRC-32 of the payload (u32 LE).
pub const HEADER_LEN: usize = 8 + 4 + 8 + 4;
/// Largest payload we accept: a state file holds registers and device state, never RAM, so a
/// header claiming more is corrupt (and must not make us allocate it).
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Why a state file cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing the file failed.
    #[error("snapshot state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Shorter than its header says.
    #[error("snapshot state file {path} is truncated: {len} bytes, the header needs {want}; take the snapshot again")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length its header implies.
        want: u64,
    },
    /// Not a cloudphone state file.
    #[error("{path} is not a cloudphone snapshot state file (bad magic)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// Written by an incompatible VMM.
    #[error("snapshot state file {path} has format version {found}; this cloudphone-vmm reads version {FORMAT_VERSION}: take the snapshot again with this VMM")]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The header claims an absurd payload.
    #[error("snapshot state file {path} claims a {len}-byte payload (at most {MAX_PAYLOAD}): the file is corrupt")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The claimed length.
        len: u64,
    },
    /// The payload does not match its checksum.
    #[error(
        "snapshot state file {path} is corrupt: checksum {found:#010x}, header says {want:#010x}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC of the payload as read.
        found: u32,
        /// CRC recorded in the header.
        want: u32,
    },
    /// The payload checks out but does not describe a VM this VMM understands.
    #[error("snapshot state file {path} does not parse: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Frame `payload` as a state file's bytes.
pub fn encode<T: Serialize>(payload: &T) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(payload)?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Check the framing of `bytes` (read from `path`) and parse its payload.
pub fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, StateFileError> {
    let path_buf = || path.to_path_buf();
    let truncated = |want: u64| StateFileError::Truncated {
        path: path_buf(),
        len: bytes.len() as u64,
        want,
    };
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(if MAGIC.starts_with(bytes) {
            truncated(HEADER_LEN as u64)
        } else {
            StateFileError::BadMagic { path: path_buf() }
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(truncated(HEADER_LEN as u64));
    }
    let field = |at: usize, n: usize| &bytes[at..at + n];
    let version = u32::from_le_bytes(field(8, 4).try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(StateFileError::Version {
            path: path_buf(),
            found: version,
        });
    }
    let len = u64::from_le_bytes(field(12, 8).try_into().expect("8 bytes"));
    if len > MAX_PAYLOAD {
        return Err(StateFileError::TooLarge {
            path: path_buf(),
            len,
        });
    }
    let want_crc = u32::from_le_bytes(field(20, 4).try_into().expect("4 bytes"));
    let end = HEADER_LEN as u64 + len;
    if (bytes.len() as u64) < end {
        return Err(truncated(end));
    }
    let body = &bytes[HEADER_LEN..end as usize];
    let found = crc32fast::hash(body);
    if found != want_crc || bytes.len() as u64 != end {
        return Err(StateFileError::Checksum {
            path: path_buf(),
            found,
            want: want_crc,
        });
    }
    serde_json::from_slice(body).map_err(|source| StateFileError::Parse {
        path: path_buf(),
        source,
    })
}

/// Write `payload` to `path` atomically (a temporary file renamed into place, synced), so a
/// crash mid-snapshot never leaves a half-written state file under the final name.
pub fn write<T: Serialize>(path: &Path, payload: &T) -> Result<(), StateFileError> {
    let io = |source| StateFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = encode(payload).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Read and check the state file at `path`.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, StateFileError> {
    let meta = std::fs::metadata(path).map_err(|source| StateFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.len() > HEADER_LEN as u64 + MAX_PAYLOAD {
        return Err(StateFileError::TooLarge {
            path: path.to_path_buf(),
            len: meta.len(),
        });
    }
    let bytes = std::fs::read(path).map_err(|source| StateFileError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "phone".into(),
            values: vec![1, 2, u64::MAX],
        }
    }

    fn p() -> &'static Path {
        Path::new("/snap/state")
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("cp-statefile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        write(&path, &sample()).unwrap();
        assert_eq!(read::<Sample>(&path).unwrap(), sample());
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_bad_header_names_its_reason() {
        let good = encode(&sample()).unwrap();
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            decode::<Sample>(p(), &magic),
            Err(StateFileError::BadMagic { .. })
        ));
        let mut version = good.clone();
        version[8] = 9;
        let err = decode::<Sample>(p(), &version).unwrap_err();
        assert!(
            matches!(err, StateFileError::Version { found: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("/snap/state"), "{err}");
        let mut big = good.clone();
        big[19] = 0xff;
        assert!(matches!(
            decode::<Sample>(p(), &big),
            Err(StateFileError::TooLarge { .. })
        ));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode::<Sample>(p(), &flipped),
            Err(StateFileError::Checksum { .. })
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<Sample>(p(), &trailing),
            Err(StateFileError::Checksum { .. })
        ));
        let wrong_shape = encode(&vec![1u8, 2]).unwrap();
        assert!(matches!(
            decode::<Sample>(p(), &wrong_shape),
            Err(StateFileError::Parse { .. })
        ));
    }

    proptest! {
        /// Any prefix of a good file is refused as truncated, never parsed.
        #[test]
        fn truncation_is_refused(cut in 0usize..200) {
            let good = encode(&sample()).unwrap();
            let cut = cut.min(good.len() - 1);
            let err = decode::<Sample>(p(), &good[..cut]).unwrap_err();
            prop_assert!(matches!(err, StateFileError::Truncated { .. }), "{err}");
        }

        /// Flipping any bit of a good file is always detected.
        #[test]
        fn any_bit_flip_is_refused(at in 0usize..200, bit in 0u8..8) {
            let mut bytes = encode(&sample()).unwrap();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            prop_assert!(decode::<Sample>(p(), &bytes).is_err());
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256),
                                       header in any::<bool>()) {
            let mut input = if header { MAGIC.to_vec() } else { Vec::new() };
            input.extend(bytes);
            let _ = decode::<Sample>(p(), &input);
        }
    }
}
