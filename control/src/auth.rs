//! Credentials: API tokens (argon2-hashed, looked up by a public id prefix so checking one
//! costs one hash), passwords for web login, and session cookies.
//!
//! Token format: `cpt_<token id: 12 hex>_<secret: 48 hex>`. Only the argon2 hash of the
//! secret is stored. After one successful argon2 check the token's SHA-256 is cached in
//! memory for [`CACHE_TTL_MS`], so steady API traffic does not pay argon2 per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::db::Database;
use crate::error::{Error, Result};
use crate::ids::{random_hex, sha256_hex};
use crate::model::User;
use crate::store::users;

/// How long a verified token is trusted from memory before argon2 runs again.
pub const CACHE_TTL_MS: i64 = 60_000;

/// Argon2 for token secrets. The secrets carry 192 random bits, so the hash only needs to
/// make a stolen database useless, not slow down guessing: small memory keeps logins cheap.
fn token_hasher() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(1024, 2, 1, None).expect("valid params"),
    )
}

/// Argon2 for human passwords: the crate's recommended defaults (19 MiB, 2 passes).
fn password_hasher() -> Argon2<'static> {
    Argon2::default()
}

fn salt() -> SaltString {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    SaltString::encode_b64(&bytes).expect("16 bytes is a valid salt")
}

fn hash_with(h: &Argon2<'_>, secret: &str) -> String {
    h.hash_password(secret.as_bytes(), &salt())
        .expect("argon2 hashing with valid params")
        .to_string()
}

fn verify_with(h: &Argon2<'_>, secret: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|p| h.verify_password(secret.as_bytes(), &p).is_ok())
}

/// Hashes a password for storage.
pub fn hash_password(password: &str) -> String {
    hash_with(&password_hasher(), password)
}

/// Checks a password against its stored hash.
pub fn verify_password(password: &str, stored: &str) -> bool {
    verify_with(&password_hasher(), password, stored)
}

/// A freshly minted token: the public id (stored) and the full secret string (shown once).
pub struct NewToken {
    pub id: String,
    pub token: String,
    pub hash: String,
}

/// Mints a token; store `hash` under `id` and give `token` to the user.
pub fn mint_token() -> NewToken {
    let id = random_hex(6);
    let secret = random_hex(24);
    let hash = hash_with(&token_hasher(), &secret);
    NewToken {
        token: format!("cpt_{id}_{secret}"),
        id,
        hash,
    }
}

/// Splits `cpt_<id>_<secret>`; anything else is malformed.
fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("cpt_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexok(id, 12) && hexok(secret, 48)).then_some((id, secret))
}

/// A verified token: SHA-256 of the full token, its user, when it was verified.
type CacheEntry = (String, User, i64);

/// Verified tokens, by token id.
#[derive(Default, Clone)]
pub struct TokenCache {
    inner: Arc<Mutex<HashMap<String, CacheEntry>>>,
}

impl TokenCache {
    /// Forgets a token (revocation) or everything of a user (`None`: role/quota change).
    pub fn forget(&self, token_id: Option<&str>, user_id: &str) {
        let mut m = self.inner.lock().expect("token cache lock");
        match token_id {
            Some(t) => {
                m.remove(t);
            }
            None => m.retain(|_, (_, u, _)| u.id != user_id),
        }
    }

    /// Resolves a bearer token to its user, or `Unauthorized` saying why.
    pub async fn verify(&self, db: &Database, token: &str) -> Result<User> {
        let bad = || {
            Error::Unauthorized(
                "invalid API token: check it or mint a new one with `cloudphone users token`"
                    .into(),
            )
        };
        let (id, secret) = parse_token(token).ok_or_else(bad)?;
        let digest = sha256_hex(token.as_bytes());
        let now = crate::now_ms();
        if let Some((d, user, at)) = self.inner.lock().expect("token cache lock").get(id) {
            if *d == digest && now - at < CACHE_TTL_MS {
                return Ok(user.clone());
            }
        }
        let mut tx = db.begin().await?;
        let (hash, user_id) = users::token(&mut tx, id).await?.ok_or_else(bad)?;
        let user = users::get(&mut tx, &user_id).await?;
        drop(tx);
        let secret = secret.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_with(&token_hasher(), &secret, &hash))
            .await
            .unwrap_or(false);
        if !ok {
            return Err(bad());
        }
        self.inner
            .lock()
            .expect("token cache lock")
            .insert(id.to_owned(), (digest, user.clone(), now));
        Ok(user)
    }
}

/// Token id of a token string (for revocation by the token itself).
pub fn token_id(token: &str) -> Option<&str> {
    parse_token(token).map(|(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let t = mint_token();
        let (id, secret) = parse_token(&t.token).unwrap();
        assert_eq!(id, t.id);
        assert!(verify_with(&token_hasher(), secret, &t.hash));
        let mut other = secret.to_owned();
        other.replace_range(0..1, if other.starts_with('0') { "1" } else { "0" });
        assert!(!verify_with(&token_hasher(), &other, &t.hash));
        assert!(parse_token("cpt_abc_def").is_none());
        assert!(parse_token("Bearer x").is_none());
        assert!(!t.hash.contains(secret), "the secret is never stored");
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a phc string"));
    }
}
