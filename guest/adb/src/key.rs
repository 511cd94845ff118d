//! Android's adb RSA public key format and AUTH signature checks.
//!
//! `~/.android/adbkey.pub` is `<base64> <user@host>`; the base64 decodes to mincrypt's
//! `RSAPublicKey`: little-endian u32 words `len` (64), `n0inv` (-1/n mod 2^32), `n[64]`,
//! `rr[64]` (R^2 mod n) and `exponent`. adb signs the device's 20-byte token as if it were a
//! SHA-1 digest (PKCS#1 v1.5 with the SHA-1 DigestInfo), so verifying needs no hashing.

use base64::Engine;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};

/// Modulus size adb uses (2048 bits, 64 words).
const MODULUS_WORDS: usize = 64;
/// Size of the decoded key structure.
pub const KEY_BYTES: usize = 4 + 4 + 4 * MODULUS_WORDS * 2 + 4;
/// Length of the AUTH token the device sends (adb's TOKEN_SIZE).
pub const TOKEN_LEN: usize = 20;

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not base64 at all.
    #[error("adb public key is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// Decoded to the wrong size (not a 2048-bit Android key).
    #[error("adb public key is {0} bytes, expected {KEY_BYTES} (a 2048-bit key from ~/.android/adbkey.pub)")]
    Size(usize),
    /// The length word is not 64.
    #[error("adb public key says its modulus has {0} words, expected {MODULUS_WORDS}")]
    Words(u32),
    /// The numbers do not form an RSA key (even modulus, bad exponent...).
    #[error("adb public key is not a valid RSA key: {0}")]
    Rsa(#[from] rsa::Error),
}

/// One adb public key, ready to verify AUTH signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdbPublicKey {
    key: RsaPublicKey,
}

impl AdbPublicKey {
    /// Parses the base64 form (the part of `adbkey.pub` before the space).
    pub fn from_base64(text: &str) -> Result<AdbPublicKey, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim())?;
        Self::from_bytes(&bytes)
    }

    /// Parses an `adbkey.pub` line or an AUTH RSAPUBLICKEY payload (`<base64> name`, maybe
    /// NUL-terminated): the name is ignored.
    pub fn from_pub_line(line: &[u8]) -> Result<AdbPublicKey, KeyError> {
        let text = String::from_utf8_lossy(line);
        let b64 = text
            .trim_end_matches(['\0', '\n', '\r'])
            .split(' ')
            .next()
            .unwrap_or_default();
        Self::from_base64(b64)
    }

    /// Parses the decoded 524-byte structure.
    pub fn from_bytes(b: &[u8]) -> Result<AdbPublicKey, KeyError> {
        if b.len() != KEY_BYTES {
            return Err(KeyError::Size(b.len()));
        }
        let word =
            |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        if word(0) as usize != MODULUS_WORDS {
            return Err(KeyError::Words(word(0)));
        }
        let n = BigUint::from_bytes_le(&b[8..8 + 4 * MODULUS_WORDS]);
        let e = BigUint::from(word(2 + 2 * MODULUS_WORDS));
        Ok(AdbPublicKey {
            key: RsaPublicKey::new(n, e)?,
        })
    }

    /// Wraps an RSA key (must be 2048 bits to be encodable).
    pub fn from_rsa(key: RsaPublicKey) -> AdbPublicKey {
        AdbPublicKey { key }
    }

    /// The 524-byte structure adb clients write into `adbkey.pub` (before base64).
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.key.n();
        let n0 = low_word(n);
        // -1/n mod 2^32 by Newton's iteration (n is odd; each step doubles the correct bits).
        let mut inv: u32 = n0;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(inv)));
        }
        let r = BigUint::from(1u8) << (32 * MODULUS_WORDS);
        let rr = (&r * &r) % n;
        let e = self.key.e().to_bytes_le();
        let mut out = Vec::with_capacity(KEY_BYTES);
        out.extend_from_slice(&(MODULUS_WORDS as u32).to_le_bytes());
        out.extend_from_slice(&inv.wrapping_neg().to_le_bytes());
        for number in [n, &rr] {
            let mut le = number.to_bytes_le();
            le.resize(4 * MODULUS_WORDS, 0);
            out.extend_from_slice(&le);
        }
        let mut e4 = e;
        e4.resize(4, 0);
        out.extend_from_slice(&e4[..4]);
        out
    }

    /// The base64 form, as in `adbkey.pub` before the space (and in the preamble's KEY lines).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.to_bytes())
    }

    /// True when `signature` is this key's PKCS#1 v1.5 SHA-1 signature of `token`.
    pub fn verifies(&self, token: &[u8], signature: &[u8]) -> bool {
        self.key
            .verify(Pkcs1v15Sign::new::<sha1::Sha1>(), token, signature)
            .is_ok()
    }
}

/// The lowest 32-bit word of `n`.
fn low_word(n: &BigUint) -> u32 {
    let mut w = [0u8; 4];
    for (d, s) in w.iter_mut().zip(n.to_bytes_le()) {
        *d = s;
    }
    u32::from_le_bytes(w)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::RsaPrivateKey;

    /// A fresh 2048-bit key pair (adb's size) from a seeded generator.
    pub fn key_pair(seed: u64) -> RsaPrivateKey {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        RsaPrivateKey::new(&mut rng, 2048).expect("2048-bit key generation")
    }

    /// Signs a token the way the adb client does.
    pub fn sign(key: &RsaPrivateKey, token: &[u8]) -> Vec<u8> {
        key.sign(Pkcs1v15Sign::new::<sha1::Sha1>(), token).unwrap()
    }

    #[test]
    fn real_key_round_trips_and_verifies_only_its_own_signatures() {
        let private = key_pair(1);
        let other = key_pair(2);
        let public = AdbPublicKey::from_rsa(private.to_public_key());
        let b64 = public.to_base64();
        let parsed = AdbPublicKey::from_pub_line(format!("{b64} user@host\0").as_bytes()).unwrap();
        assert_eq!(parsed, public);
        let bytes = public.to_bytes();
        assert_eq!(bytes.len(), KEY_BYTES);
        // n0inv * n[0] == -1 mod 2^32, as mincrypt expects.
        let n0 = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        let n0inv = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(n0.wrapping_mul(n0inv), u32::MAX);
        let token = [7u8; TOKEN_LEN];
        assert!(parsed.verifies(&token, &sign(&private, &token)));
        assert!(!parsed.verifies(&token, &sign(&other, &token)));
        assert!(!parsed.verifies(&[8u8; TOKEN_LEN], &sign(&private, &token)));
        assert!(!parsed.verifies(&token, b"short"));
    }

    #[test]
    fn refuses_malformed_keys() {
        assert!(matches!(
            AdbPublicKey::from_base64("***"),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            AdbPublicKey::from_base64("AAAA"),
            Err(KeyError::Size(3))
        ));
        let mut b = vec![0u8; KEY_BYTES];
        assert!(matches!(
            AdbPublicKey::from_bytes(&b),
            Err(KeyError::Words(0))
        ));
        b[0] = 64;
        assert!(matches!(
            AdbPublicKey::from_bytes(&b),
            Err(KeyError::Rsa(_))
        ));
    }
}
