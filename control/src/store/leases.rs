//! Leases: acquire (or queue), renew, release, expiry, and handing freed phones to the queue.

use crate::db::{Row, Tx, Value};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::{Lease, LeaseState, Phone, PhoneState, QueueEntry, Role, User};
use crate::scheduler::{self, QuotaRefusal};

use super::{audit, phones, profiles, queue};

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

/// What a lease request asks for (validated by the caller).
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Profile id or name.
    pub profile: String,
    pub duration_s: i64,
    /// Keep the phone's disk between leases (the phone is parked for this user on release).
    pub persistent: bool,
    /// Queue when no phone is free (otherwise fail with a conflict).
    pub wait: bool,
}

/// The outcome of a lease request.
#[derive(Debug, Clone)]
pub enum Acquired {
    Granted(Lease),
    Queued(QueueEntry),
}

/// Grants a lease or queues the request, atomically. The user row lock serialises one
/// user's requests (quota); the user's own parked phone is theirs alone, so it is granted
/// without touching the profile. Anything else takes the profile row lock (PostgreSQL) or
/// runs under the database write lock (SQLite), so concurrent requests see each other's
/// effects: a phone is never assigned twice and queue order is arrival order.
pub async fn acquire(tx: &mut Tx, user: &User, req: &LeaseRequest) -> Result<Acquired> {
    let held = super::one(
        tx,
        "user",
        &format!("{HELD_SQL}{}", tx.lock_suffix()),
        &[(&user.id).into(), (&user.id).into(), (&user.id).into()],
    )
    .await?
    .int(0)?;
    let minutes = minutes_used_today(tx, &user.id).await?;
    scheduler::check_quota(held, user.max_phones, minutes, user.max_minutes_per_day).map_err(|r| {
        Error::Quota(match r {
            QuotaRefusal::Phones { limit } => {
                format!("quota: at most {limit} phones (leased or queued) at once; release one first")
            }
            QuotaRefusal::Minutes { limit } => {
                format!("quota: {limit} phone-minutes per day used up; try again tomorrow (UTC)")
            }
        })
    })?;
    let own = tx
        .query_opt(
            &format!(
                "SELECT id, profile_id FROM phones WHERE profile_id = \
                 (SELECT id FROM profiles WHERE id = ? OR name = ?) \
                 AND reserved_for = ? AND state = 'ready' LIMIT 1{}",
                tx.skip_locked_suffix()
            ),
            &[
                (&req.profile).into(),
                (&req.profile).into(),
                (&user.id).into(),
            ],
        )
        .await?;
    if let Some(r) = own {
        let lease = grant(
            tx,
            &user.id,
            &r.text(0)?,
            &r.text(1)?,
            req.duration_s,
            req.persistent,
        )
        .await?;
        return Ok(Acquired::Granted(lease));
    }
    let profile = profiles::get_locked(tx, &req.profile).await?;
    let phone = match queue::waiting_count(tx, &profile.id).await? {
        0 => free_phone(tx, &profile.id).await?,
        _ => None,
    };
    if let Some(phone_id) = phone {
        let lease = grant(
            tx,
            &user.id,
            &phone_id,
            &profile.id,
            req.duration_s,
            req.persistent,
        )
        .await?;
        return Ok(Acquired::Granted(lease));
    }
    if !req.wait {
        return Err(Error::Conflict(format!(
            "no phone of profile {} is free; retry later or ask with \"wait\": true to queue",
            profile.name
        )));
    }
    let entry = queue::enqueue(tx, &user.id, &profile.id, req.duration_s, req.persistent).await?;
    audit::record(tx, &user.name, "queue.join", &entry.id, &profile.name, None).await?;
    Ok(Acquired::Queued(queue::with_position(tx, entry).await?))
}

/// The oldest free phone of a profile, skipping rows other transactions hold.
async fn free_phone(tx: &mut Tx, profile_id: &str) -> Result<Option<String>> {
    let sql = format!(
        "SELECT id FROM phones WHERE profile_id = ? AND state = 'ready' AND reserved_for IS NULL ORDER BY created_ms, id LIMIT 1{}",
        tx.skip_locked_suffix()
    );
    tx.query_opt(&sql, &[profile_id.into()])
        .await?
        .map(|r| r.text(0))
        .transpose()
        .map_err(Into::into)
}

/// Assigns a ready phone and writes the lease. The conditional UPDATE is the last guard
/// against double assignment: it changes nothing unless the phone is still `ready`.
async fn grant(
    tx: &mut Tx,
    user_id: &str,
    phone_id: &str,
    profile_id: &str,
    duration_s: i64,
    persistent: bool,
) -> Result<Lease> {
    let now = crate::now_ms();
    let changed = tx
        .execute(
            "UPDATE phones SET state = 'assigned', reserved_for = NULL, updated_ms = ? WHERE id = ? AND state = 'ready'",
            &[now.into(), phone_id.into()],
        )
        .await?;
    if changed != 1 {
        return Err(Error::Conflict(format!(
            "phone {phone_id} was taken concurrently; retry"
        )));
    }
    let lease = Lease {
        id: new_id("ls"),
        user_id: user_id.to_owned(),
        phone_id: phone_id.to_owned(),
        profile_id: profile_id.to_owned(),
        state: LeaseState::Active,
        persistent,
        started_ms: now,
        expires_ms: now + duration_s * 1000,
        ended_ms: None,
    };
    tx.execute(
        "INSERT INTO leases (id, user_id, phone_id, profile_id, state, persistent, started_ms, expires_ms) VALUES (?, ?, ?, ?, 'active', ?, ?, ?)",
        &[
            (&lease.id).into(),
            user_id.into(),
            phone_id.into(),
            profile_id.into(),
            persistent.into(),
            lease.started_ms.into(),
            lease.expires_ms.into(),
        ],
    )
    .await?;
    audit::record(
        tx,
        "scheduler",
        "lease.grant",
        &lease.id,
        &format!("phone {phone_id}"),
        Some(user_id),
    )
    .await?;
    Ok(lease)
}

/// Hands free phones of a profile to the head of its queue, in arrival order, until either
/// runs out. Called whenever a phone becomes ready (the caller holds the profile lock).
pub async fn dispatch(tx: &mut Tx, profile_id: &str) -> Result<usize> {
    let mut granted = 0;
    while let Some(head) = queue::head(tx, profile_id).await? {
        let Some(phone_id) = free_phone(tx, profile_id).await? else {
            break;
        };
        let lease = grant(
            tx,
            &head.user_id,
            &phone_id,
            profile_id,
            head.duration_s,
            head.persistent,
        )
        .await?;
        queue::mark_granted(tx, &head.id, &lease.id).await?;
        granted += 1;
    }
    Ok(granted)
}

/// A lease as `user` may see it (another user's lease is `NotFound`).
pub async fn get_visible(tx: &mut Tx, user: &User, id: &str) -> Result<Lease> {
    let lease =
        decode(&super::one(tx, "lease", &format!("{COLS} WHERE id = ?"), &[id.into()]).await?)?;
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
/// returns it as stored.
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
    Ok(Lease {
        state,
        ended_ms: Some(now),
        ..lease.clone()
    })
}

/// Ends a lease by release or expiry and returns its phone: a persistent phone is parked
/// for its user with its disk; any other is reset from its clean base before reuse.
/// Neither makes a phone free for the queue, so only the phone and lease rows are locked
/// (in that order, as everywhere).
pub async fn release(
    tx: &mut Tx,
    actor: &User,
    lease_id: &str,
    state: LeaseState,
) -> Result<Lease> {
    let phone = phones::get_locked_by_lease(tx, lease_id).await?;
    let sql = format!("{COLS} WHERE id = ?{}", tx.lock_suffix());
    let lease = decode(&super::one(tx, "lease", &sql, &[lease_id.into()]).await?)?;
    if actor.role != Role::Operator && lease.user_id != actor.id {
        return Err(Error::NotFound("lease".into()));
    }
    let lease = end(tx, &lease, state, &actor.name).await?;
    if phone.state == PhoneState::Assigned {
        let (to, why) = if lease.persistent {
            (PhoneState::Ready, "persistent lease ended; parked")
        } else {
            (PhoneState::Resetting, "lease ended; reset to clean base")
        };
        let reserved_for = lease.persistent.then(|| lease.user_id.clone());
        phones::apply(
            tx,
            Phone {
                reserved_for,
                ..phone
            },
            to,
            &actor.name,
            why,
        )
        .await?;
    }
    let notify = (actor.id != lease.user_id).then_some(lease.user_id.as_str());
    audit::record(
        tx,
        &actor.name,
        &format!("lease.{}", state.as_str()),
        &lease.id,
        &lease.phone_id,
        notify,
    )
    .await?;
    Ok(lease)
}

/// Extends an active lease to `duration_s` from now.
pub async fn renew(tx: &mut Tx, user: &User, lease_id: &str, duration_s: i64) -> Result<Lease> {
    let lease = get_visible(tx, user, lease_id).await?;
    if lease.state != LeaseState::Active {
        return Err(Error::Conflict(format!(
            "lease {lease_id} already ended; request a new one"
        )));
    }
    tx.execute(
        "UPDATE leases SET expires_ms = ? WHERE id = ? AND state = 'active'",
        &[
            (crate::now_ms() + duration_s * 1000).into(),
            lease_id.into(),
        ],
    )
    .await?;
    audit::record(
        tx,
        &user.name,
        "lease.renew",
        lease_id,
        &format!("{duration_s}s"),
        None,
    )
    .await?;
    get_visible(tx, user, lease_id).await
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

/// Remaining ms of the active leases of a profile (for queue ETAs).
pub async fn remaining_ms(tx: &mut Tx, profile_id: &str) -> Result<Vec<i64>> {
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

/// Phone-minutes `user_id` used today (UTC).
async fn minutes_used_today(tx: &mut Tx, user_id: &str) -> Result<i64> {
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
