//! The leases table: reading, ending and counting leases, and the quota inputs. Granting,
//! releasing and renewing cross tables and live in [`super::lifecycle`].

use crate::db::{LeaseEnded, Row, Tx, Value};
use crate::error::{Error, Result};
use crate::model::{Lease, LeaseState, Role, User};
use crate::scheduler;

const COLS: &str =
    "SELECT id, user_id, phone_id, profile_id, state, persistent, started_ms, expires_ms, ended_ms FROM leases";

/// Phones a user holds (active leases plus waiting queue entries), read from the user row
/// so that PostgreSQL can lock it (`FOR UPDATE` is appended). Params: user id three times.
const HELD_SQL: &str =
    "SELECT (SELECT COUNT(*) FROM leases WHERE user_id = ? AND state = 'active') + \
     (SELECT COUNT(*) FROM queue WHERE user_id = ? AND state = 'waiting') FROM users WHERE id = ?";

/// Lease spans that may overlap today (UTC). Params: user id, start of today.
const TODAY_SQL: &str =
    "SELECT started_ms, ended_ms FROM leases WHERE user_id = ? AND (ended_ms IS NULL OR ended_ms >= ?)";

fn decode(r: &Row) -> Result<Lease> {
    let state = r.text(4)?;
    Ok(Lease {
        id: r.text(0)?,
        user_id: r.text(1)?,
        phone_id: r.text(2)?,
        profile_id: r.text(3)?,
        state: LeaseState::parse(&state)
            .ok_or_else(|| Error::Invalid(format!("stored lease state {state:?}")))?,
        persistent: r.int(5)? != 0,
        started_ms: r.int(6)?,
        expires_ms: r.int(7)?,
        ended_ms: r.opt_int(8)?,
    })
}

/// Phones `user_id` holds (active leases plus waiting queue entries), with the user row
/// locked on PostgreSQL so one user's requests are serialised (quota).
pub async fn held_locked(tx: &mut Tx, user_id: &str) -> Result<i64> {
    let sql = format!("{HELD_SQL}{}", tx.lock_suffix());
    super::one(
        tx,
        "user",
        &sql,
        &[user_id.into(), user_id.into(), user_id.into()],
    )
    .await?
    .int(0)
    .map_err(Into::into)
}

/// A lease by id, whoever holds it (callers decide who may see it).
pub async fn get(tx: &mut Tx, id: &str) -> Result<Lease> {
    decode(&super::one(tx, "lease", &format!("{COLS} WHERE id = ?"), &[id.into()]).await?)
}

/// A lease as `user` may see it (another user's lease is `NotFound`).
pub async fn get_visible(tx: &mut Tx, user: &User, id: &str) -> Result<Lease> {
    let lease = get(tx, id).await?;
    if user.role != Role::Operator && lease.user_id != user.id {
        return Err(Error::NotFound("lease".into()));
    }
    Ok(lease)
}

/// Leases visible to `user`: their own (operators: everyone's), active only unless `all`.
pub async fn list_visible(tx: &mut Tx, user: &User, all: bool) -> Result<Vec<Lease>> {
    let op = user.role == Role::Operator;
    tx.query(
        &format!("{COLS} WHERE (? = 1 OR user_id = ?) AND (? = 1 OR state = 'active') ORDER BY started_ms, id"),
        &[Value::Int(op.into()), (&user.id).into(), Value::Int(all.into())],
    )
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// A lease by id, row-locked for the rest of the transaction (callers lock its phone first).
pub async fn get_locked(tx: &mut Tx, id: &str) -> Result<Lease> {
    let sql = format!("{COLS} WHERE id = ?{}", tx.lock_suffix());
    decode(&super::one(tx, "lease", &sql, &[id.into()]).await?)
}

/// How lease `id` has ended by `now_ms`: its stored end, or `Expired` for an active lease past
/// its expiry that the scheduler has not reaped yet; `None` while it holds. Stream sessions
/// re-check the lease they were granted for with this.
pub async fn ended_by(tx: &mut Tx, id: &str, now_ms: i64) -> Result<Option<LeaseState>> {
    let lease = get(tx, id).await?;
    Ok(match lease.state {
        LeaseState::Active if lease.expires_ms <= now_ms => Some(LeaseState::Expired),
        LeaseState::Active => None,
        ended => Some(ended),
    })
}

/// The active lease on a phone, if any.
pub async fn active_for_phone(tx: &mut Tx, phone_id: &str) -> Result<Option<Lease>> {
    let row = tx
        .query_opt(
            &format!("{COLS} WHERE phone_id = ? AND state = 'active'"),
            &[phone_id.into()],
        )
        .await?;
    row.as_ref().map(decode).transpose()
}

/// Marks a lease ended (only the lease row; the phone is the caller's business) and
/// returns it as stored. Every lease end goes through here, so this is where it is announced
/// (on commit) to the stream sessions granted for it.
pub async fn end(tx: &mut Tx, lease: &Lease, state: LeaseState, actor: &str) -> Result<Lease> {
    let now = crate::now_ms();
    let n = tx
        .execute(
            "UPDATE leases SET state = ?, ended_ms = ? WHERE id = ? AND state = 'active'",
            &[state.as_str().into(), now.into(), (&lease.id).into()],
        )
        .await?;
    if n != 1 {
        return Err(Error::Conflict(format!("lease {} already ended", lease.id)));
    }
    tracing::debug!(lease = %lease.id, state = state.as_str(), actor, "lease ended");
    tx.lease_ended(LeaseEnded {
        lease_id: lease.id.clone(),
        phone_id: lease.phone_id.clone(),
        state,
    });
    Ok(Lease {
        state,
        ended_ms: Some(now),
        ..lease.clone()
    })
}

/// Active leases past their expiry (ids), for the expiry loop.
pub async fn due(tx: &mut Tx) -> Result<Vec<String>> {
    tx.query(
        "SELECT id FROM leases WHERE state = 'active' AND expires_ms <= ? ORDER BY expires_ms",
        &[crate::now_ms().into()],
    )
    .await?
    .iter()
    .map(|r| r.text(0).map_err(Into::into))
    .collect()
}

/// Phone-minutes `user_id` used today (UTC).
pub async fn minutes_used_today(tx: &mut Tx, user_id: &str) -> Result<i64> {
    let now = crate::now_ms();
    let rows = tx
        .query(
            TODAY_SQL,
            &[user_id.into(), scheduler::day_start_ms(now).into()],
        )
        .await?;
    let spans: Vec<(i64, Option<i64>)> = rows
        .iter()
        .map(|r| Ok((r.int(0)?, r.opt_int(1)?)))
        .collect::<Result<_>>()?;
    Ok(scheduler::minutes_used_today(&spans, now))
}

/// Number of active leases (metrics).
pub async fn active_count(tx: &mut Tx) -> Result<i64> {
    super::count(
        tx,
        "SELECT COUNT(*) FROM leases WHERE state = 'active'",
        &[],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Database;

    /// The quota checks of every lease request read only (partial) indexes: their cost must
    /// not grow with the user's lease history by visiting table rows.
    #[tokio::test]
    async fn quota_queries_read_only_indexes() {
        let dir = std::env::temp_dir().join(format!("cp-plan-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::open_sqlite(&dir).await.unwrap();
        let mut tx = db.begin().await.unwrap();
        let plan = |rows: Vec<Row>| -> String {
            rows.iter()
                .map(|r| r.text(3).unwrap())
                .collect::<Vec<_>>()
                .join("; ")
        };
        let today = plan(
            tx.query(
                &format!("EXPLAIN QUERY PLAN {TODAY_SQL}"),
                &["u".into(), Value::Int(0)],
            )
            .await
            .unwrap(),
        );
        assert!(today.contains("COVERING INDEX leases_user_span"), "{today}");
        let held = plan(
            tx.query(
                &format!("EXPLAIN QUERY PLAN {HELD_SQL}"),
                &["u".into(), "u".into(), "u".into()],
            )
            .await
            .unwrap(),
        );
        assert!(held.contains("INDEX leases_active_user"), "{held}");
        assert!(held.contains("INDEX queue_waiting_user"), "{held}");
        assert!(!held.contains("SCAN"), "no table scan: {held}");
        drop(tx);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
