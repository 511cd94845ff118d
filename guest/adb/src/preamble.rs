//! The cloudphone key preamble: before any adb byte on a new connection to the phone's adbd,
//! the host writes which adb keys may authenticate:
//! ```text
//! CLOUDPHONE-ADB 1\n
//! KEY <base64 Android RSA public key>\n      (0 to 16 lines)
//! END\n
//! ```
//! adbd reads it under strict limits (lines up to 1024 bytes, 16 keys, 5 s in all) and closes
//! the connection on anything else. The keys are the lease owner's registered keys, so the
//! phone never prompts: a key not listed is refused, and zero keys let nobody in.

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use crate::key::{AdbPublicKey, KeyError};

/// First line of the preamble (protocol name and version).
pub const MAGIC_LINE: &str = "CLOUDPHONE-ADB 1";
/// Longest preamble line accepted, newline excluded.
pub const MAX_LINE: usize = 1024;
/// Most keys one preamble may carry.
pub const MAX_KEYS: usize = 16;
/// Time allowed for the whole preamble.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a preamble was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// First line is not `CLOUDPHONE-ADB 1`: the peer is not the cloudphone host side.
    #[error("connection did not start with the `{MAGIC_LINE}` key preamble")]
    NotPreamble,
    /// A line exceeds [`MAX_LINE`].
    #[error("preamble line longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// More than [`MAX_KEYS`] keys.
    #[error("preamble carries more than {MAX_KEYS} keys")]
    TooManyKeys,
    /// A line other than `KEY ...` or `END`.
    #[error("unexpected preamble line {0:?} (expected `KEY <base64>` or `END`)")]
    BadLine(String),
    /// A KEY line whose key does not parse.
    #[error("preamble key {index}: {source}")]
    BadKey { index: usize, source: KeyError },
    /// Not complete within [`TIMEOUT`].
    #[error("key preamble not complete within {TIMEOUT:?}")]
    Timeout,
    /// The peer closed or the socket failed.
    #[error("reading the key preamble: {0}")]
    Io(#[from] std::io::Error),
}

/// The preamble bytes for `keys` (at most [`MAX_KEYS`]).
pub fn encode<'a>(
    keys: impl IntoIterator<Item = &'a AdbPublicKey>,
) -> Result<Vec<u8>, PreambleError> {
    let mut out = format!("{MAGIC_LINE}\n").into_bytes();
    for (i, key) in keys.into_iter().enumerate() {
        if i == MAX_KEYS {
            return Err(PreambleError::TooManyKeys);
        }
        out.extend_from_slice(format!("KEY {}\n", key.to_base64()).as_bytes());
    }
    out.extend_from_slice(b"END\n");
    Ok(out)
}

/// Writes the preamble for `keys` in one write.
pub fn write<'a>(
    w: &mut impl Write,
    keys: impl IntoIterator<Item = &'a AdbPublicKey>,
) -> Result<(), PreambleError> {
    w.write_all(&encode(keys)?)?;
    Ok(())
}

/// Reads a preamble and returns its keys. Reads byte by byte so no adb byte after `END\n` is
/// consumed. Give `r` a short read timeout (e.g. 250 ms): timeouts are retried until
/// `deadline`, so a silent peer costs at most `deadline` plus one timeout.
pub fn read(r: &mut impl Read, deadline: Instant) -> Result<Vec<AdbPublicKey>, PreambleError> {
    if read_line(r, deadline)? != MAGIC_LINE.as_bytes() {
        return Err(PreambleError::NotPreamble);
    }
    let mut keys = Vec::new();
    loop {
        let line = read_line(r, deadline)?;
        if line == b"END" {
            return Ok(keys);
        }
        let Some(b64) = line.strip_prefix(b"KEY ") else {
            return Err(PreambleError::BadLine(
                String::from_utf8_lossy(&line).chars().take(64).collect(),
            ));
        };
        if keys.len() == MAX_KEYS {
            return Err(PreambleError::TooManyKeys);
        }
        let key = AdbPublicKey::from_base64(&String::from_utf8_lossy(b64)).map_err(|source| {
            PreambleError::BadKey {
                index: keys.len(),
                source,
            }
        })?;
        keys.push(key);
    }
}

/// One `\n`-terminated line (without the newline), bounded in size and time.
fn read_line(r: &mut impl Read, deadline: Instant) -> Result<Vec<u8>, PreambleError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if Instant::now() >= deadline {
            return Err(PreambleError::Timeout);
        }
        match r.read(&mut byte) {
            Ok(0) => return Err(std::io::Error::from(ErrorKind::UnexpectedEof).into()),
            Ok(_) if byte[0] == b'\n' => return Ok(line),
            Ok(_) if line.len() == MAX_LINE => return Err(PreambleError::LineTooLong),
            Ok(_) => line.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::key_pair;
    use proptest::prelude::*;

    fn later() -> Instant {
        Instant::now() + TIMEOUT
    }

    #[test]
    fn round_trip_leaves_adb_bytes_unread() {
        let key = AdbPublicKey::from_rsa(key_pair(3).to_public_key());
        let mut wire = encode([&key, &key]).unwrap();
        wire.extend_from_slice(b"CNXN...");
        let mut r = &wire[..];
        assert_eq!(read(&mut r, later()).unwrap(), vec![key.clone(), key]);
        assert_eq!(r, b"CNXN...");
        assert!(read(&mut &b"CLOUDPHONE-ADB 1\nEND\n"[..], later())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn refuses_everything_else() {
        let bad = |wire: &[u8]| read(&mut &wire[..], later()).unwrap_err();
        assert!(matches!(bad(b"CNXN\0\0\0\x01"), PreambleError::Io(_)));
        assert!(matches!(
            bad(b"CLOUDPHONE-ADB 2\nEND\n"),
            PreambleError::NotPreamble
        ));
        assert!(matches!(
            bad(b"CLOUDPHONE-ADB 1\nHELLO\n"),
            PreambleError::BadLine(_)
        ));
        assert!(matches!(
            bad(b"CLOUDPHONE-ADB 1\nKEY AAAA\n"),
            PreambleError::BadKey { index: 0, .. }
        ));
        let long = [b"CLOUDPHONE-ADB 1\nKEY ".as_slice(), &[b'A'; 2000]].concat();
        assert!(matches!(bad(&long), PreambleError::LineTooLong));
        let key = AdbPublicKey::from_rsa(key_pair(4).to_public_key());
        assert!(matches!(
            encode(vec![&key; 17]),
            Err(PreambleError::TooManyKeys)
        ));
        let mut many = encode(vec![&key; 16]).unwrap();
        many.truncate(many.len() - 4);
        many.extend_from_slice(format!("KEY {}\nEND\n", key.to_base64()).as_bytes());
        assert!(matches!(bad(&many), PreambleError::TooManyKeys));
        assert!(matches!(
            read(&mut &b"CLOUDPHONE-ADB 1\n"[..], Instant::now()),
            Err(PreambleError::Timeout)
        ));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (mut a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let t0 = Instant::now();
        let e = read(&mut a, t0 + Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, PreambleError::Timeout), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = read(&mut &bytes[..], later());
        }
    }
}
