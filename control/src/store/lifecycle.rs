//! The operations that cross tables: the phone and lease lifecycle (grant, dispatch to the
//! queue, release, renew, a phone lost or reset, warm pools), host liveness (heartbeat,
//! reaping silent hosts) and the fleet sample. The table modules beside this one only read
//! and write their own table and import none of each other; every rule that ties two tables
//! together is here, once, for both databases (see [`super`] for the lock order).

use crate::db::Tx;
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::{
    Host, Lease, LeaseState, Phone, PhoneState, QueueEntry, Role, User, UtilisationSample,
};
use crate::scheduler::{self, QuotaRefusal};

use super::{audit, hosts, leases, phones, profiles, queue};

/// Phone states that do not occupy a slot.
const GONE: [&str; 3] = ["stopped", "failed", "lost"];

/// What a lease request asks for (validated by the caller).
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Profile id or name.
    pub profile: String,
    /// Lease length in seconds (the caller checked the range).
    pub duration_s: i64,
    /// Keep the phone's disk between leases (the phone is parked for this user on release).
    pub persistent: bool,
    /// Queue when no phone is free (otherwise fail with a conflict).
    pub wait: bool,
}

/// The outcome of a lease request.
#[derive(Debug, Clone)]
pub enum Acquired {
    /// A phone was free: the new lease.
    Granted(Lease),
    /// Nothing was free: the queue entry, with position and ETA.
    Queued(QueueEntry),
}

/// Records a heartbeat. A host coming back reconciles its `lost` phones with what it
/// reports running: a surviving VMM is reset (its lease already ended), a gone one stopped,
/// and so is a persistent phone (never reset: its disk is kept in the agent's quarantine).
pub async fn heartbeat(tx: &mut Tx, host_id: &str, running: &[String]) -> Result<Host> {
    let host = hosts::get(tx, host_id).await?;
    tx.execute(
        "UPDATE hosts SET last_heartbeat_ms = ?, state = 'online' WHERE id = ?",
        &[crate::now_ms().into(), host_id.into()],
    )
    .await?;
    if host.state != "online" {
        audit::record(
            tx,
            "agent",
            "host.online",
            host_id,
            "heartbeats resumed",
            None,
        )
        .await?;
    }
    let lost = tx
        .query(
            "SELECT id FROM phones WHERE host_id = ? AND state = 'lost'",
            &[host_id.into()],
        )
        .await?;
    for r in lost {
        let id = r.text(0)?;
        // A reset would give a persistent phone a fresh disk: it is stopped instead, and the
        // agent, no longer asked to run it, quarantines its directory for an operator.
        let persistent = tx
            .query_opt(
                "SELECT persistent FROM leases WHERE phone_id = ? ORDER BY started_ms DESC LIMIT 1",
                &[(&id).into()],
            )
            .await?
            .map(|r| r.int(0))
            .transpose()?
            == Some(1);
        let to = if running.contains(&id) && !persistent {
            PhoneState::Resetting
        } else {
            PhoneState::Stopped
        };
        transition(tx, &id, to, "agent", "reconciled after host came back").await?;
    }
    hosts::get(tx, host_id).await
}

/// Marks online hosts silent since before `cutoff_ms` offline. Only that: the scheduler stops
/// placing phones there, but their phones and leases ride out the gap (see [`lose_hosts`]).
/// Returns the hosts marked.
pub async fn mark_offline(tx: &mut Tx, cutoff_ms: i64) -> Result<Vec<String>> {
    let rows = tx
        .query(
            &format!(
                "SELECT id FROM hosts WHERE state = 'online' AND last_heartbeat_ms < ?{}",
                tx.lock_suffix()
            ),
            &[cutoff_ms.into()],
        )
        .await?;
    let mut marked = Vec::new();
    for r in rows {
        let host_id = r.text(0)?;
        tx.execute(
            "UPDATE hosts SET state = 'offline' WHERE id = ?",
            &[(&host_id).into()],
        )
        .await?;
        audit::record(
            tx,
            "scheduler",
            "host.offline",
            &host_id,
            "missed heartbeats",
            None,
        )
        .await?;
        marked.push(host_id);
    }
    Ok(marked)
}

/// Marks the live phones of offline hosts silent since before `cutoff_ms` `lost` (which ends
/// their leases and tells the users). Returns the phones marked.
pub async fn lose_hosts(tx: &mut Tx, cutoff_ms: i64) -> Result<Vec<String>> {
    let rows = tx
        .query(
            "SELECT p.id FROM phones p JOIN hosts h ON h.id = p.host_id \
             WHERE h.state = 'offline' AND h.last_heartbeat_ms < ? \
             AND p.state NOT IN ('stopped', 'failed', 'lost') ORDER BY p.id",
            &[cutoff_ms.into()],
        )
        .await?;
    let mut lost = Vec::new();
    for r in rows {
        let id = r.text(0)?;
        let reason = "host silent past the lost limit";
        transition(tx, &id, PhoneState::Lost, "scheduler", reason).await?;
        lost.push(id);
    }
    Ok(lost)
}

/// Grants a lease or queues the request, atomically. The user row lock serialises one
/// user's requests (quota); the user's own parked phone is theirs alone, so it is granted
/// without touching the profile. Anything else takes the profile row lock (PostgreSQL) or
/// runs under the database write lock (SQLite), so concurrent requests see each other's
/// effects: a phone is never assigned twice and queue order is arrival order.
pub async fn acquire(tx: &mut Tx, user: &User, req: &LeaseRequest) -> Result<Acquired> {
    let held = leases::held_locked(tx, &user.id).await?;
    let minutes = leases::minutes_used_today(tx, &user.id).await?;
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
    let lease = leases::get_locked(tx, lease_id).await?;
    if actor.role != Role::Operator && lease.user_id != actor.id {
        return Err(Error::NotFound("lease".into()));
    }
    let lease = leases::end(tx, &lease, state, &actor.name).await?;
    if phone.state == PhoneState::Assigned {
        let (to, why) = if lease.persistent {
            (PhoneState::Ready, "persistent lease ended; parked")
        } else {
            (PhoneState::Resetting, "lease ended; reset to clean base")
        };
        let reserved_for = lease.persistent.then(|| lease.user_id.clone());
        apply(
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
    let lease = leases::get_visible(tx, user, lease_id).await?;
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
    leases::get_visible(tx, user, lease_id).await
}

/// Moves a phone to `to` if the state machine allows it, with every consequence:
/// a phone leaving `assigned` other than by release ends its lease (`lost`) and tells the
/// user; a phone becoming `ready` is handed to the head of its profile's queue.
/// Locks the profile, then the phone (see `store` lock order).
pub async fn transition(
    tx: &mut Tx,
    phone_id: &str,
    to: PhoneState,
    actor: &str,
    reason: &str,
) -> Result<Phone> {
    let profile_id = phones::get(tx, phone_id).await?.profile_id;
    profiles::get_locked(tx, &profile_id).await?;
    let phone = phones::get_locked(tx, phone_id).await?;
    apply(tx, phone, to, actor, reason).await
}

/// [`transition`] for a caller that holds the phone row lock (and the profile lock when
/// the phone may become ready for the queue) and passes the phone's current row.
/// `phone.reserved_for` is stored as the new owner reservation (cleared when the phone
/// fails, is lost or stops). Returns the phone as stored.
pub async fn apply(
    tx: &mut Tx,
    mut phone: Phone,
    to: PhoneState,
    actor: &str,
    reason: &str,
) -> Result<Phone> {
    if !phone.state.can_become(to) {
        return Err(Error::Conflict(format!(
            "phone {} cannot go from {} to {}",
            phone.id,
            phone.state.as_str(),
            to.as_str()
        )));
    }
    let dies = matches!(
        to,
        PhoneState::Failed | PhoneState::Lost | PhoneState::Stopping
    );
    if dies {
        // A parked persistent phone that dies loses its owner reservation too.
        phone.reserved_for = None;
    }
    let bump = i64::from(to == PhoneState::Resetting);
    let keep_reason = matches!(to, PhoneState::Failed | PhoneState::Lost);
    let now = crate::now_ms();
    tx.execute(
        "UPDATE phones SET state = ?, generation = generation + ?, reserved_for = ?, reason = ?, updated_ms = ? WHERE id = ?",
        &[
            to.as_str().into(),
            bump.into(),
            phone.reserved_for.as_deref().into(),
            keep_reason.then_some(reason).into(),
            now.into(),
            (&phone.id).into(),
        ],
    )
    .await?;
    phone.state = to;
    phone.generation += bump;
    phone.reason = keep_reason.then(|| reason.to_owned());
    phone.updated_ms = now;
    if dies {
        if let Some(lease) = leases::active_for_phone(tx, &phone.id).await? {
            leases::end(tx, &lease, LeaseState::Lost, actor).await?;
            audit::record(
                tx,
                actor,
                "lease.lost",
                &lease.id,
                &format!("phone {} went {}: {reason}", phone.id, to.as_str()),
                Some(&lease.user_id),
            )
            .await?;
        }
    }
    audit::record(
        tx,
        actor,
        &format!("phone.{}", to.as_str()),
        &phone.id,
        reason,
        None,
    )
    .await?;
    // A phone parked for its owner cannot serve the queue; a free one goes to its head.
    if to == PhoneState::Ready
        && phone.reserved_for.is_none()
        && dispatch(tx, &phone.profile_id).await? > 0
    {
        return phones::get(tx, &phone.id).await;
    }
    Ok(phone)
}

/// Brings every profile's live phone count to its `pool_size`: creates phones on the hosts
/// with most room, and stops surplus free phones. Returns how many phones were created.
pub async fn reconcile_pools(tx: &mut Tx) -> Result<usize> {
    let mut created = 0;
    for profile in profiles::list(tx).await? {
        profiles::get_locked(tx, &profile.id).await?;
        let live = phones::live_of_profile(tx, &profile.id).await?;
        let mut missing = profile.pool_size - live.len() as i64;
        while missing > 0 {
            let loads = hosts::loads(tx).await?;
            let Some(host) = scheduler::place(&loads, profile.vcpus, profile.memory_mib) else {
                tracing::debug!(profile = %profile.name, missing, "no host has room for the warm pool");
                break;
            };
            let id = new_id("ph");
            let now = crate::now_ms();
            tx.execute(
                "INSERT INTO phones (id, profile_id, host_id, state, generation, created_ms, updated_ms) VALUES (?, ?, ?, 'creating', 0, ?, ?)",
                &[(&id).into(), (&profile.id).into(), (&host.host_id).into(), now.into(), now.into()],
            )
            .await?;
            audit::record(
                tx,
                "scheduler",
                "phone.create",
                &id,
                &format!("pool of {}", profile.name),
                None,
            )
            .await?;
            missing -= 1;
            created += 1;
        }
        let surplus = live
            .iter()
            .filter(|p| p.state == PhoneState::Ready && p.reserved_for.is_none())
            .take((-missing).max(0) as usize)
            .map(|p| p.id.clone())
            .collect::<Vec<_>>();
        for id in surplus {
            transition(tx, &id, PhoneState::Stopping, "scheduler", "pool shrank").await?;
        }
    }
    Ok(created)
}

/// Leaves the queue.
pub async fn cancel_queued(tx: &mut Tx, user: &User, id: &str) -> Result<QueueEntry> {
    let e = queue::get_visible(tx, user, id).await?;
    let n = tx
        .execute(
            "UPDATE queue SET state = 'cancelled' WHERE id = ? AND state = 'waiting'",
            &[id.into()],
        )
        .await?;
    if n != 1 {
        return Err(Error::Conflict(format!(
            "queue entry {id} is no longer waiting (state {})",
            e.state
        )));
    }
    audit::record(tx, &user.name, "queue.cancel", id, "", None).await?;
    queue::get_visible(tx, user, id).await
}

/// The fleet now: online hosts and their slots, live and assigned phones, queue length.
pub async fn sample_utilisation(tx: &mut Tx, at_ms: i64) -> Result<UtilisationSample> {
    let hosts = super::one(
        tx,
        "online host totals",
        "SELECT COUNT(*), CAST(COALESCE(SUM(max_phones), 0) AS BIGINT) FROM hosts WHERE state = 'online'",
        &[],
    )
    .await?;
    let (hosts_online, capacity) = (hosts.int(0)?, hosts.int(1)?);
    let by_state = phones::count_by_state(tx).await?;
    let count = |keep: &dyn Fn(&str) -> bool| {
        by_state
            .iter()
            .filter(|(state, _)| keep(state))
            .map(|(_, n)| n)
            .sum()
    };
    Ok(UtilisationSample {
        at_ms,
        hosts_online,
        capacity,
        phones: count(&|s| !GONE.contains(&s)),
        assigned: count(&|s| s == "assigned"),
        queued: queue::total_waiting(tx).await?,
    })
}
