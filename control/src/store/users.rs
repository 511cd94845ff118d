//! Users, API tokens and web sessions.

use crate::db::{Row, Tx, Value};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::{Role, User};

/// Default quotas for new users: concurrent phones and phone-minutes per UTC day.
pub const DEFAULT_MAX_PHONES: i64 = 2;
pub const DEFAULT_MAX_MINUTES: i64 = 8 * 60;

const COLS: &str = "SELECT id, name, role, max_phones, max_minutes_per_day, created_ms FROM users";

fn decode(r: &Row) -> Result<User> {
    let role = r.text(2)?;
    Ok(User {
        id: r.text(0)?,
        name: r.text(1)?,
        role: Role::parse(&role)
            .ok_or_else(|| Error::Invalid(format!("stored role {role:?} is unknown")))?,
        max_phones: r.int(3)?,
        max_minutes_per_day: r.int(4)?,
        created_ms: r.int(5)?,
    })
}

/// Fields of a new user (validated by the caller).
pub struct NewUser<'a> {
    pub name: &'a str,
    pub role: Role,
    pub password_hash: Option<String>,
    pub max_phones: i64,
    pub max_minutes_per_day: i64,
}

/// Inserts a user; a taken name is a conflict.
pub async fn create(tx: &mut Tx, u: NewUser<'_>) -> Result<User> {
    let user = User {
        id: new_id("u"),
        name: u.name.to_owned(),
        role: u.role,
        max_phones: u.max_phones,
        max_minutes_per_day: u.max_minutes_per_day,
        created_ms: crate::now_ms(),
    };
    tx.execute(
        "INSERT INTO users (id, name, role, password_hash, max_phones, max_minutes_per_day, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            (&user.id).into(),
            (&user.name).into(),
            user.role.as_str().into(),
            u.password_hash.into(),
            user.max_phones.into(),
            user.max_minutes_per_day.into(),
            user.created_ms.into(),
        ],
    )
    .await?;
    Ok(user)
}

/// A user by id.
pub async fn get(tx: &mut Tx, id: &str) -> Result<User> {
    decode(&super::one(tx, "user", &format!("{COLS} WHERE id = ?"), &[id.into()]).await?)
}

/// A user and their password hash, by name (login).
pub async fn by_name_with_password(
    tx: &mut Tx,
    name: &str,
) -> Result<Option<(User, Option<String>)>> {
    let row = tx
        .query_opt(
            "SELECT id, name, role, max_phones, max_minutes_per_day, created_ms, password_hash FROM users WHERE name = ?",
            &[name.into()],
        )
        .await?;
    row.map(|r| Ok((decode(&r)?, r.opt_text(6)?))).transpose()
}

/// All users, by name.
pub async fn list(tx: &mut Tx) -> Result<Vec<User>> {
    tx.query(&format!("{COLS} ORDER BY name"), &[])
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Whether any operator exists (bootstrap runs only on an empty system).
pub async fn has_operator(tx: &mut Tx) -> Result<bool> {
    Ok(super::count(
        tx,
        "SELECT COUNT(*) FROM users WHERE role = 'operator'",
        &[],
    )
    .await?
        > 0)
}

/// Changes quotas and/or password of a user.
pub async fn update(
    tx: &mut Tx,
    id: &str,
    max_phones: Option<i64>,
    max_minutes: Option<i64>,
    password_hash: Option<String>,
) -> Result<User> {
    let user = get(tx, id).await?;
    tx.execute(
        "UPDATE users SET max_phones = ?, max_minutes_per_day = ?, password_hash = COALESCE(?, password_hash) WHERE id = ?",
        &[
            max_phones.unwrap_or(user.max_phones).into(),
            max_minutes.unwrap_or(user.max_minutes_per_day).into(),
            password_hash.into(),
            id.into(),
        ],
    )
    .await?;
    get(tx, id).await
}

/// Stores a token's hash under its public id.
pub async fn insert_token(tx: &mut Tx, token_id: &str, user_id: &str, hash: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO api_tokens (id, user_id, hash, created_ms, revoked) VALUES (?, ?, ?, ?, 0)",
        &[
            token_id.into(),
            user_id.into(),
            hash.into(),
            crate::now_ms().into(),
        ],
    )
    .await?;
    Ok(())
}

/// The stored hash and owner of a live token: unrevoked and minted after `minted_after_ms`
/// (token expiry).
pub async fn token(
    tx: &mut Tx,
    token_id: &str,
    minted_after_ms: i64,
) -> Result<Option<(String, String)>> {
    let row = tx
        .query_opt(
            "SELECT hash, user_id FROM api_tokens WHERE id = ? AND revoked = 0 AND created_ms > ?",
            &[token_id.into(), Value::Int(minted_after_ms)],
        )
        .await?;
    row.map(|r| Ok((r.text(0)?, r.text(1)?))).transpose()
}

/// Revokes a token of `user_id`; returns whether one was revoked.
pub async fn revoke_token(tx: &mut Tx, user_id: &str, token_id: &str) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE api_tokens SET revoked = 1 WHERE id = ? AND user_id = ? AND revoked = 0",
            &[token_id.into(), user_id.into()],
        )
        .await?
        == 1)
}

/// Ends every other session of a user (after a password change): revokes all their tokens
/// but `keep_token` and deletes all their web sessions but `keep_session` (a cookie hash).
pub async fn end_other_sessions(
    tx: &mut Tx,
    user_id: &str,
    keep_token: Option<&str>,
    keep_session: Option<&str>,
) -> Result<()> {
    tx.execute(
        "UPDATE api_tokens SET revoked = 1 WHERE user_id = ? AND revoked = 0 AND id <> ?",
        &[user_id.into(), keep_token.unwrap_or("").into()],
    )
    .await?;
    tx.execute(
        "DELETE FROM sessions WHERE user_id = ? AND id_hash <> ?",
        &[user_id.into(), keep_session.unwrap_or("").into()],
    )
    .await?;
    Ok(())
}

/// The stored password hash of a user (`None`: token-only account).
pub async fn password_hash(tx: &mut Tx, id: &str) -> Result<Option<String>> {
    let row = super::one(
        tx,
        "user",
        "SELECT password_hash FROM users WHERE id = ?",
        &[id.into()],
    )
    .await?;
    Ok(row.opt_text(0)?)
}

/// Creates a web session (by the SHA-256 of its cookie value).
pub async fn insert_session(
    tx: &mut Tx,
    id_hash: &str,
    user_id: &str,
    expires_ms: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO sessions (id_hash, user_id, expires_ms) VALUES (?, ?, ?)",
        &[id_hash.into(), user_id.into(), expires_ms.into()],
    )
    .await?;
    Ok(())
}

/// The user of a live session.
pub async fn session_user(tx: &mut Tx, id_hash: &str) -> Result<Option<User>> {
    let row = tx
        .query_opt(
            "SELECT u.id, u.name, u.role, u.max_phones, u.max_minutes_per_day, u.created_ms FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ? AND s.expires_ms > ?",
            &[id_hash.into(), Value::Int(crate::now_ms())],
        )
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Ends a session (logout).
pub async fn delete_session(tx: &mut Tx, id_hash: &str) -> Result<()> {
    tx.execute("DELETE FROM sessions WHERE id_hash = ?", &[id_hash.into()])
        .await?;
    Ok(())
}
