//! Users' adb public keys.

use crate::db::{Row, Tx};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::AdbKey;

const COLS: &str = "SELECT id, user_id, fingerprint, public_key, comment, created_ms FROM adb_keys";

fn decode(r: &Row) -> Result<AdbKey> {
    Ok(AdbKey {
        id: r.text(0)?,
        user_id: r.text(1)?,
        fingerprint: r.text(2)?,
        key: r.text(3)?,
        comment: r.text(4)?,
        created_ms: r.int(5)?,
    })
}

/// Adds a key (already validated) for `user_id`, refusing a duplicate or more than `max`
/// keys. The user row is locked first so concurrent adds cannot pass the limit together.
pub async fn add(
    tx: &mut Tx,
    user_id: &str,
    key: &crate::adb::key::RegisteredKey,
    comment: &str,
    max: usize,
) -> Result<AdbKey> {
    let lock = format!("SELECT id FROM users WHERE id = ?{}", tx.lock_suffix());
    super::one(tx, "user", &lock, &[user_id.into()]).await?;
    let existing = list(tx, user_id).await?;
    if existing.iter().any(|k| k.fingerprint == key.fingerprint) {
        return Err(Error::Conflict(format!(
            "key {} is already registered",
            key.fingerprint
        )));
    }
    if existing.len() >= max {
        return Err(Error::Conflict(format!(
            "at most {max} adb keys per user: remove one first (cloudphone keys rm ID)"
        )));
    }
    let k = AdbKey {
        id: new_id("ak"),
        user_id: user_id.to_owned(),
        fingerprint: key.fingerprint.clone(),
        key: key.base64.clone(),
        comment: comment.to_owned(),
        created_ms: crate::now_ms(),
    };
    tx.execute(
        "INSERT INTO adb_keys (id, user_id, fingerprint, public_key, comment, created_ms) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            (&k.id).into(),
            (&k.user_id).into(),
            (&k.fingerprint).into(),
            (&k.key).into(),
            (&k.comment).into(),
            k.created_ms.into(),
        ],
    )
    .await?;
    Ok(k)
}

/// A user's keys, oldest first.
pub async fn list(tx: &mut Tx, user_id: &str) -> Result<Vec<AdbKey>> {
    tx.query(
        &format!("{COLS} WHERE user_id = ? ORDER BY created_ms, id"),
        &[user_id.into()],
    )
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// Removes key `id` of `user_id` (another user's key is not found).
pub async fn remove(tx: &mut Tx, user_id: &str, id: &str) -> Result<AdbKey> {
    let sql = format!("{COLS} WHERE id = ? AND user_id = ?");
    let k = decode(&super::one(tx, "adb key", &sql, &[id.into(), user_id.into()]).await?)?;
    tx.execute("DELETE FROM adb_keys WHERE id = ?", &[id.into()])
        .await?;
    Ok(k)
}
