//! The FIFO queue of lease requests waiting for a phone.

use crate::db::{Row, Tx};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::{QueueEntry, Role, User};
use crate::scheduler;

const COLS: &str =
    "SELECT id, seq, user_id, profile_id, duration_s, persistent, state, lease_id, created_ms FROM queue";

fn decode(r: &Row) -> Result<QueueEntry> {
    Ok(QueueEntry {
        id: r.text(0)?,
        seq: r.int(1)?,
        user_id: r.text(2)?,
        profile_id: r.text(3)?,
        duration_s: r.int(4)?,
        persistent: r.int(5)? != 0,
        state: r.text(6)?,
        lease_id: r.opt_text(7)?,
        position: None,
        eta_ms: None,
        created_ms: r.int(8)?,
    })
}

/// Appends a waiting entry with the next global sequence number.
pub async fn enqueue(
    tx: &mut Tx,
    user_id: &str,
    profile_id: &str,
    duration_s: i64,
    persistent: bool,
) -> Result<QueueEntry> {
    let seq = tx
        .query_opt(
            "UPDATE counters SET value = value + 1 WHERE name = 'queue' RETURNING value",
            &[],
        )
        .await?
        .ok_or_else(|| Error::Invalid("queue counter missing: database not migrated".into()))?
        .int(0)?;
    let e = QueueEntry {
        id: new_id("q"),
        seq,
        user_id: user_id.to_owned(),
        profile_id: profile_id.to_owned(),
        duration_s,
        persistent,
        state: "waiting".into(),
        lease_id: None,
        position: None,
        eta_ms: None,
        created_ms: crate::now_ms(),
    };
    tx.execute(
        "INSERT INTO queue (id, seq, user_id, profile_id, duration_s, persistent, state, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'waiting', ?)",
        &[(&e.id).into(), seq.into(), user_id.into(), profile_id.into(), duration_s.into(), persistent.into(), e.created_ms.into()],
    )
    .await?;
    Ok(e)
}

/// Number of waiting entries of a profile.
pub async fn waiting_count(tx: &mut Tx, profile_id: &str) -> Result<i64> {
    super::count(
        tx,
        "SELECT COUNT(*) FROM queue WHERE profile_id = ? AND state = 'waiting'",
        &[profile_id.into()],
    )
    .await
}

/// Total waiting entries (metrics).
pub async fn total_waiting(tx: &mut Tx) -> Result<i64> {
    super::count(
        tx,
        "SELECT COUNT(*) FROM queue WHERE state = 'waiting'",
        &[],
    )
    .await
}

/// The oldest waiting entry of a profile.
pub async fn head(tx: &mut Tx, profile_id: &str) -> Result<Option<QueueEntry>> {
    let sql = format!(
        "{COLS} WHERE profile_id = ? AND state = 'waiting' ORDER BY seq LIMIT 1{}",
        tx.lock_suffix()
    );
    tx.query_opt(&sql, &[profile_id.into()])
        .await?
        .as_ref()
        .map(decode)
        .transpose()
}

/// Records that an entry was served by `lease_id` (the grant itself notified the user).
pub async fn mark_granted(tx: &mut Tx, id: &str, lease_id: &str) -> Result<()> {
    tx.execute(
        "UPDATE queue SET state = 'granted', lease_id = ? WHERE id = ? AND state = 'waiting'",
        &[lease_id.into(), id.into()],
    )
    .await?;
    Ok(())
}

/// Fills in live position and ETA of a waiting entry.
pub async fn with_position(tx: &mut Tx, mut e: QueueEntry) -> Result<QueueEntry> {
    if e.state != "waiting" {
        return Ok(e);
    }
    let pos = super::count(
        tx,
        "SELECT COUNT(*) FROM queue WHERE profile_id = ? AND state = 'waiting' AND seq <= ?",
        &[(&e.profile_id).into(), e.seq.into()],
    )
    .await?;
    let remaining = remaining_ms(tx, &e.profile_id).await?;
    e.position = Some(pos);
    e.eta_ms = scheduler::queue_eta_ms(pos, &remaining, e.duration_s.saturating_mul(1000));
    Ok(e)
}

/// Remaining ms of the active leases of a profile (for queue ETAs).
async fn remaining_ms(tx: &mut Tx, profile_id: &str) -> Result<Vec<i64>> {
    let now = crate::now_ms();
    tx.query(
        "SELECT expires_ms FROM leases WHERE profile_id = ? AND state = 'active'",
        &[profile_id.into()],
    )
    .await?
    .iter()
    .map(|r| Ok(r.int(0)? - now))
    .collect()
}

/// An entry as `user` may see it (another user's entry is `NotFound`).
pub async fn get_visible(tx: &mut Tx, user: &User, id: &str) -> Result<QueueEntry> {
    let e = decode(
        &super::one(
            tx,
            "queue entry",
            &format!("{COLS} WHERE id = ?"),
            &[id.into()],
        )
        .await?,
    )?;
    if user.role != Role::Operator && e.user_id != user.id {
        return Err(Error::NotFound("queue entry".into()));
    }
    with_position(tx, e).await
}

/// Waiting entries visible to `user`, in queue order, with positions.
pub async fn list_visible(tx: &mut Tx, user: &User) -> Result<Vec<QueueEntry>> {
    let op = i64::from(user.role == Role::Operator);
    let rows = tx
        .query(
            &format!("{COLS} WHERE state = 'waiting' AND (? = 1 OR user_id = ?) ORDER BY seq"),
            &[op.into(), (&user.id).into()],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(with_position(tx, decode(&r)?).await?);
    }
    Ok(out)
}
