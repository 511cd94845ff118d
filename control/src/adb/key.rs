//! adb public keys as users register them (`~/.android/adbkey.pub`): checked here so a phone's
//! adbd is only ever handed well-formed keys, and named by a fingerprint in listings.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Size of Android's `RSAPublicKey` struct (2048-bit modulus): word count, n0inv, modulus,
/// R² mod N, exponent.
pub const ANDROID_KEY_LEN: usize = 4 + 4 + 256 + 256 + 4;
/// Modulus words (32-bit) of a 2048-bit key.
const MODULUS_WORDS: u32 = 64;

/// A registered key: the base64 text the phone is given and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdbPublicKey {
    /// Canonical base64 of the 524-byte struct (as in adbkey.pub before the space).
    pub base64: String,
    /// `SHA256:` + unpadded base64 of the struct's SHA-256 (the OpenSSH style).
    pub fingerprint: String,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

/// Parses the base64 of an Android RSA public key, refusing anything that is not one: wrong
/// size, a modulus that is not 2048 bits and odd, an `n0inv` that does not match it, or an
/// exponent other than 3 or 65537.
pub fn parse(text: &str) -> Result<AdbPublicKey, Error> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "key: {why}; give the base64 of an Android adb public key (the first field of \
             ~/.android/adbkey.pub)"
        ))
    };
    let text = text.trim();
    if text.len() > 1024 {
        return Err(bad("longer than 1024 characters"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| bad("not base64"))?;
    if raw.len() != ANDROID_KEY_LEN {
        return Err(bad(&format!(
            "{} bytes, not the {ANDROID_KEY_LEN} of a 2048-bit RSAPublicKey",
            raw.len()
        )));
    }
    if le32(&raw, 0) != MODULUS_WORDS {
        return Err(bad("modulus size is not 64 words (2048 bits)"));
    }
    let modulus = &raw[8..264];
    if modulus[0] & 1 == 0 || modulus[255] & 0x80 == 0 {
        return Err(bad("modulus is not an odd 2048-bit number"));
    }
    // n0inv = -1 / n[0] mod 2^32, so n0inv * n[0] + 1 == 0 (mod 2^32).
    if le32(&raw, 4).wrapping_mul(le32(modulus, 0)).wrapping_add(1) != 0 {
        return Err(bad("n0inv does not match the modulus"));
    }
    let exponent = le32(&raw, 520);
    if exponent != 3 && exponent != 65537 {
        return Err(bad(&format!("exponent {exponent} is neither 3 nor 65537")));
    }
    let digest = Sha256::digest(&raw);
    Ok(AdbPublicKey {
        base64: base64::engine::general_purpose::STANDARD.encode(&raw),
        fingerprint: format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        ),
    })
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
    fn real_keys_parse_and_fingerprint_distinctly() {
        let a = parse(&format!("  {}\n", base64_of(KEY_FILES[0]))).unwrap();
        assert_eq!(a.base64, base64_of(KEY_FILES[0]));
        assert!(a.fingerprint.starts_with("SHA256:") && a.fingerprint.len() == 7 + 43);
        assert_ne!(
            a.fingerprint,
            parse(base64_of(KEY_FILES[1])).unwrap().fingerprint
        );
    }

    #[test]
    fn each_broken_field_is_refused_with_its_reason() {
        let good = base64::engine::general_purpose::STANDARD
            .decode(base64_of(KEY_FILES[0]))
            .unwrap();
        let broken = |at: usize, byte: u8| {
            let mut raw = good.clone();
            raw[at] = byte;
            parse(&base64::engine::general_purpose::STANDARD.encode(raw))
                .unwrap_err()
                .to_string()
        };
        assert!(broken(0, 32).contains("64 words"));
        assert!(broken(4, good[4] ^ 1).contains("n0inv"));
        assert!(broken(263, good[263] & 0x7f).contains("2048-bit"));
        assert!(broken(8, good[8] & 0xfe).contains("2048-bit"));
        assert!(broken(520, 5).contains("exponent"));
        assert!(parse("not base64!")
            .unwrap_err()
            .to_string()
            .contains("not base64"));
        assert!(parse("QUFB").unwrap_err().to_string().contains("3 bytes"));
        assert!(parse(&"A".repeat(2000))
            .unwrap_err()
            .to_string()
            .contains("1024"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,800}") {
            let _ = parse(&s);
        }

        #[test]
        fn random_524_byte_structs_are_refused(raw in proptest::collection::vec(any::<u8>(), ANDROID_KEY_LEN)) {
            let text = base64::engine::general_purpose::STANDARD.encode(&raw);
            // The word count alone is wrong in all but 1 in 2^32 random structs.
            prop_assert_eq!(parse(&text).is_ok(), false);
        }
    }
}
