//! adb public keys as users register them (`~/.android/adbkey.pub`): parsed with the shared
//! `cloudphone-adb` parser, so a phone's adbd is only ever handed keys it can read, and named
//! by a fingerprint in listings.

use base64::Engine as _;
use cloudphone_adb::key::AdbPublicKey;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Longest key text accepted (a 524-byte key is 700 base64 characters).
const MAX_TEXT: usize = 1024;

/// A key as registered: the canonical base64 the phone is given and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredKey {
    /// Canonical base64 of the 524-byte struct (as in adbkey.pub before the space).
    pub base64: String,
    /// `SHA256:` + unpadded base64 of the struct's SHA-256 (the OpenSSH style).
    pub fingerprint: String,
}

/// Parses the base64 of an Android RSA public key, refusing anything that is not one.
pub fn parse(text: &str) -> Result<RegisteredKey, Error> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "key: {why}; give the base64 of an Android adb public key (the first field of \
             ~/.android/adbkey.pub)"
        ))
    };
    let text = text.trim();
    if text.len() > MAX_TEXT {
        return Err(bad(&format!("longer than {MAX_TEXT} characters")));
    }
    let key = AdbPublicKey::from_base64(text).map_err(|e| bad(&e.to_string()))?;
    let raw = key.to_bytes();
    Ok(RegisteredKey {
        base64: base64::engine::general_purpose::STANDARD.encode(&raw),
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&raw))
        ),
    })
}

/// Parses keys already registered (stored canonical), for a phone's preamble.
pub fn for_phone(keys: &[String]) -> Result<Vec<AdbPublicKey>, Error> {
    keys.iter()
        .map(|k| AdbPublicKey::from_base64(k).map_err(|e| Error::Invalid(format!("key: {e}"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real keys (from 2048-bit RSA keys made with openssl), as adbkey.pub files.
    const KEY_FILES: [&str; 2] = [
        include_str!("../../tests/fixtures/adbkey1.pub"),
        include_str!("../../tests/fixtures/adbkey2.pub"),
    ];

    fn base64_of(file: &str) -> &str {
        file.split_whitespace().next().unwrap()
    }

    #[test]
    fn real_keys_parse_canonically_and_fingerprint_distinctly() {
        let a = parse(&format!("  {}\n", base64_of(KEY_FILES[0]))).unwrap();
        assert_eq!(a.base64, base64_of(KEY_FILES[0]));
        assert!(a.fingerprint.starts_with("SHA256:") && a.fingerprint.len() == 7 + 43);
        assert_ne!(
            a.fingerprint,
            parse(base64_of(KEY_FILES[1])).unwrap().fingerprint
        );
        assert_eq!(
            for_phone(std::slice::from_ref(&a.base64)).unwrap()[0].to_base64(),
            a.base64
        );
    }

    #[test]
    fn what_is_not_a_key_is_refused_saying_what_to_give() {
        for (text, why) in [
            ("not base64!", "not base64"),
            ("QUFB", "3 bytes"),
            (&"A".repeat(2000), "1024"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("adbkey.pub"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,800}") {
            let _ = parse(&s);
        }
    }
}
