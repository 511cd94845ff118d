//! Leases: acquire (or queue), renew, release, expiry, and handing freed phones to the queue.

use crate::db::{Row, Tx, Value};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::{Lease, LeaseState, PhoneState, QueueEntry, Role, User};
use crate::scheduler::{self, QuotaRefusal};

use super::{audit, phones, profiles, queue};

const COLS: &str =
    "SELECT id, user_id, phone_id, profile_id, state, persistent, started_ms, expires_ms, ended_ms FROM leases";

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

/// Grants a lease or queues the request, atomically: the profile row lock (PostgreSQL) or
/// the database write lock (SQLite) makes concurrent requests see each other's effects,
/// so a phone is never assigned twice and queue order is arrival order.
pub async fn acquire(tx: &mut Tx, user: &User, req: &LeaseRequest) -> Result<Acquired> {
    let profile = profiles::get_locked(tx, &req.profile).await?;
    tx.query(
        &format!("SELECT id FROM users WHERE id = ?{}", tx.lock_suffix()),
        &[(&user.id).into()],
    )
    .await?;
    let held = super::count(
        tx,
        "SELECT (SELECT COUNT(*) FROM leases WHERE user_id = ? AND state = 'active') + \
         (SELECT COUNT(*) FROM queue WHERE user_id = ? AND state = 'waiting')",
        &[(&user.id).into(), (&user.id).into()],
    )
    .await?;
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
                "SELECT id FROM phones WHERE profile_id = ? AND reserved_for = ? AND state = 'ready' LIMIT 1{}",
                tx.skip_locked_suffix()
            ),
            &[(&profile.id).into(), (&user.id).into()],
        )
        .await?;
    let phone = match own {
        Some(r) => Some(r.text(0)?),
        None if queue::waiting_count(tx, &profile.id).await? == 0 => {
            free_phone(tx, &profile.id).await?
        }
        None => None,
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

/// Marks a lease ended (only the lease row; the phone is the caller's business).
pub async fn end(tx: &mut Tx, lease: &Lease, state: LeaseState, actor: &str) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE leases SET state = ?, ended_ms = ? WHERE id = ? AND state = 'active'",
            &[
                state.as_str().into(),
                crate::now_ms().into(),
                (&lease.id).into(),
            ],
        )
        .await?;
    if n != 1 {
        return Err(Error::Conflict(format!("lease {} already ended", lease.id)));
    }
    tracing::debug!(lease = %lease.id, state = state.as_str(), actor, "lease ended");
    Ok(())
}

/// Ends a lease by release or expiry and returns its phone: a persistent phone is parked
/// for its user with its disk; any other is reset from its clean base before reuse.
pub async fn release(
    tx: &mut Tx,
    actor: &User,
    lease_id: &str,
    state: LeaseState,
) -> Result<Lease> {
    let lease = get_visible(tx, actor, lease_id).await?;
    profiles::get_locked(tx, &lease.profile_id).await?;
    let lease = decode(
        &super::one(
            tx,
            "lease",
            &format!("{COLS} WHERE id = ?{}", tx.lock_suffix()),
            &[lease_id.into()],
        )
        .await?,
    )?;
    end(tx, &lease, state, &actor.name).await?;
    let phone = phones::get(tx, &lease.phone_id).await?;
    if phone.state == PhoneState::Assigned {
        if lease.persistent {
            tx.execute(
                "UPDATE phones SET reserved_for = ? WHERE id = ?",
                &[(&lease.user_id).into(), (&phone.id).into()],
            )
            .await?;
            phones::transition(
                tx,
                &phone.id,
                PhoneState::Ready,
                &actor.name,
                "persistent lease ended; parked",
            )
            .await?;
        } else {
            phones::transition(
                tx,
                &phone.id,
                PhoneState::Resetting,
                &actor.name,
                "lease ended; reset to clean base",
            )
            .await?;
        }
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
    get_visible(tx, actor, lease_id).await
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
            "SELECT started_ms, ended_ms FROM leases WHERE user_id = ? AND (ended_ms IS NULL OR ended_ms >= ?)",
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
