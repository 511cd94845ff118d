//! Credentials: API tokens (argon2-hashed, looked up by a public id prefix so checking one
//! costs one hash), passwords for web login, and session cookies; and the bounded pool every
//! argon2 hash runs on.
//!
//! Token format: `cpt_<token id: 12 hex>_<secret: 48 hex>`. Only the argon2 hash of the
//! secret is stored. Every request re-reads the token's row (one indexed lookup), so a
//! revocation or expiry is seen by every replica at once; only the argon2 check is skipped
//! when this process has already verified the same token against the same stored hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::db::Database;
use crate::error::{Error, Result};
use crate::ids::{random_hex, sha256_hex};
use crate::model::User;
use crate::store::users;

/// How long a hash waits for a free slot of the [`HashPool`] before the caller gets 429.
pub const HASH_WAIT: Duration = Duration::from_secs(5);

/// Most verified tokens remembered (an attacker minting tokens cannot grow it further).
const VERIFIED_MAX: usize = 65_536;

/// Runs argon2 on at most N blocking threads at once. Each password hash takes 19 MiB, so
/// an unbounded burst of logins would be a memory DoS; callers that wait longer than
/// [`HASH_WAIT`] for a slot get `Throttled` (429) instead of queueing without limit.
#[derive(Clone)]
pub struct HashPool {
    slots: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

impl HashPool {
    /// A pool of `concurrency` slots (at least one) whose callers wait up to [`HASH_WAIT`].
    pub fn new(concurrency: usize) -> Self {
        Self::with_wait(concurrency, HASH_WAIT)
    }

    /// A pool whose callers wait up to `wait` for a slot.
    pub fn with_wait(concurrency: usize, wait: Duration) -> Self {
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(concurrency.max(1))),
            wait,
        }
    }

    /// Runs `job` on a blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let busy = || Error::Throttled {
            what: "the server is busy checking passwords".into(),
            retry_after_s: self.wait.as_secs().max(1),
        };
        let slot = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            job()
        })
        .await
        .map_err(|e| Error::Invalid(format!("password hashing failed: {e}")))
    }
}

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

/// Checks a password against its stored hash; `None` (unknown user, or one without a
/// password) is checked against a fixed dummy hash and fails, so both cost one full hash and
/// a login's timing does not tell which user names exist.
pub fn verify_password(password: &str, stored: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("no user has this password"));
    let ok = verify_with(&password_hasher(), password, stored.unwrap_or(dummy));
    ok && stored.is_some()
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

/// Tokens this process has verified: token id → (SHA-256 of the full token, the stored hash
/// it matched). Holds no authority by itself: the row is read on every request.
#[derive(Default, Clone)]
pub struct TokenCache {
    verified: Arc<Mutex<HashMap<String, (String, String)>>>,
}

impl TokenCache {
    /// Resolves a bearer token to its user, or `Unauthorized` saying why. The token must be
    /// unrevoked and younger than `ttl_ms`.
    pub async fn verify(
        &self,
        db: &Database,
        pool: &HashPool,
        token: &str,
        ttl_ms: i64,
    ) -> Result<User> {
        let bad = || {
            Error::Unauthorized(
                "invalid, revoked or expired API token: mint a new one with `cloudphone users token`"
                    .into(),
            )
        };
        let (id, secret) = parse_token(token).ok_or_else(bad)?;
        let digest = sha256_hex(token.as_bytes());
        let mut tx = db.begin().await?;
        let (hash, user_id) = users::token(&mut tx, id, crate::now_ms() - ttl_ms)
            .await?
            .ok_or_else(bad)?;
        let user = users::get(&mut tx, &user_id).await?;
        drop(tx);
        let known = self
            .verified
            .lock()
            .expect("token cache lock")
            .get(id)
            .is_some_and(|(d, h)| *d == digest && *h == hash);
        if known {
            return Ok(user);
        }
        let (secret, stored) = (secret.to_owned(), hash.clone());
        if !pool
            .run(move || verify_with(&token_hasher(), &secret, &stored))
            .await?
        {
            return Err(bad());
        }
        let mut verified = self.verified.lock().expect("token cache lock");
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(id.to_owned(), (digest, hash));
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

    #[tokio::test]
    async fn a_full_hash_pool_refuses_after_its_wait() {
        let pool = HashPool::with_wait(1, Duration::from_millis(100));
        let (hold, release) = std::sync::mpsc::channel::<()>();
        let busy = pool.clone();
        let holder = tokio::spawn(async move { busy.run(move || release.recv()).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refused = pool.run(|| ()).await;
        assert!(
            matches!(refused, Err(Error::Throttled { .. })),
            "a second hash waits at most the pool's wait"
        );
        hold.send(()).unwrap();
        assert!(holder.await.unwrap().is_ok());
        assert!(
            pool.run(|| ()).await.is_ok(),
            "the freed slot is used again"
        );
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse");
        assert!(verify_password("correct horse", Some(&h)));
        assert!(!verify_password("wrong", Some(&h)));
        assert!(!verify_password("x", Some("not a phc string")));
        assert!(!verify_password("no user has this password", None));
    }
}
