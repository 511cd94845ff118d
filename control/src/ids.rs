//! Random identifiers and secrets.

/// `n` random bytes from the OS, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).expect("the OS random source is available");
    hex(&buf)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A new id such as `ph_3f9a0c1b2d4e5f60`: a type prefix plus 64 random bits, so ids are
/// unguessable and never reveal how many of a thing exist.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(8))
}

/// Whether `s` looks like an id we issue (prefix, underscore, 16 hex digits): path
/// parameters are checked with this before they reach the database.
pub fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('_'))
        .is_some_and(|h| {
            h.len() == 16
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_strictly() {
        let id = new_id("ph");
        assert!(is_id(&id, "ph"), "{id}");
        assert!(!is_id(&id, "ls"));
        assert!(!is_id("ph_' OR 1=1 --", "ph"));
        assert!(!is_id("ph_0123456789ABCDEF", "ph"));
        assert_ne!(new_id("ph"), new_id("ph"));
    }
}
