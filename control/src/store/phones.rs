//! Phones: the state machine applied to stored rows, visibility, and the warm pool.

use crate::db::{Row, Tx, Value};
use crate::error::{Error, Result};
use crate::ids::new_id;
use crate::model::{LeaseState, Phone, PhoneState, Role, User};
use crate::scheduler;

use super::{audit, hosts, leases, profiles};

pub(crate) const COLS: &str =
    "SELECT id, profile_id, host_id, state, generation, reserved_for, api_socket, reason, created_ms, updated_ms FROM phones";

pub(crate) fn decode(r: &Row) -> Result<Phone> {
    let state = r.text(3)?;
    Ok(Phone {
        id: r.text(0)?,
        profile_id: r.text(1)?,
        host_id: r.text(2)?,
        state: PhoneState::parse(&state)
            .ok_or_else(|| Error::Invalid(format!("stored phone state {state:?}")))?,
        generation: r.int(4)?,
        reserved_for: r.opt_text(5)?,
        api_socket: r.opt_text(6)?,
        reason: r.opt_text(7)?,
        created_ms: r.int(8)?,
        updated_ms: r.int(9)?,
    })
}

/// A phone by id, without visibility checks (internal).
pub async fn get(tx: &mut Tx, id: &str) -> Result<Phone> {
    decode(&super::one(tx, "phone", &format!("{COLS} WHERE id = ?"), &[id.into()]).await?)
}

/// Whether `user` may see phone `p`: operators always; users when they hold its active
/// lease or it is their parked persistent phone.
async fn visible(tx: &mut Tx, user: &User, p: &Phone) -> Result<bool> {
    if user.role == Role::Operator || p.reserved_for.as_deref() == Some(user.id.as_str()) {
        return Ok(true);
    }
    Ok(super::count(
        tx,
        "SELECT COUNT(*) FROM leases WHERE phone_id = ? AND user_id = ? AND state = 'active'",
        &[(&p.id).into(), (&user.id).into()],
    )
    .await?
        > 0)
}

/// A phone as `user` may see it; another user's phone is `NotFound`, like a missing one.
pub async fn get_visible(tx: &mut Tx, user: &User, id: &str) -> Result<Phone> {
    let p = get(tx, id).await?;
    if visible(tx, user, &p).await? {
        Ok(p)
    } else {
        Err(Error::NotFound("phone".into()))
    }
}

/// Phones visible to `user`, optionally filtered by state.
pub async fn list_visible(
    tx: &mut Tx,
    user: &User,
    state: Option<PhoneState>,
) -> Result<Vec<Phone>> {
    let st: Value = state.map(|s| s.as_str()).into();
    let rows = if user.role == Role::Operator {
        tx.query(
            &format!("{COLS} WHERE (CAST(? AS TEXT) IS NULL OR state = ?) ORDER BY created_ms, id"),
            &[st.clone(), st],
        )
        .await?
    } else {
        tx.query(
            &format!(
                "{COLS} WHERE (CAST(? AS TEXT) IS NULL OR state = ?) AND (reserved_for = ? OR id IN \
                 (SELECT phone_id FROM leases WHERE user_id = ? AND state = 'active')) ORDER BY created_ms, id"
            ),
            &[st.clone(), st, (&user.id).into(), (&user.id).into()],
        )
        .await?
    };
    rows.iter().map(decode).collect()
}

/// Phones of one host that the agent should act on (everything not yet final).
pub async fn for_host(tx: &mut Tx, host_id: &str) -> Result<Vec<Phone>> {
    tx.query(
        &format!("{COLS} WHERE host_id = ? AND state NOT IN ('stopped', 'failed') ORDER BY created_ms, id"),
        &[host_id.into()],
    )
    .await?
    .iter()
    .map(decode)
    .collect()
}

/// Counts phones per state (metrics).
pub async fn count_by_state(tx: &mut Tx) -> Result<Vec<(String, i64)>> {
    tx.query("SELECT state, COUNT(*) FROM phones GROUP BY state", &[])
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect()
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
    let profile_id = get(tx, phone_id).await?.profile_id;
    profiles::get_locked(tx, &profile_id).await?;
    let phone = get_locked(tx, phone_id).await?;
    apply(tx, phone, to, actor, reason).await
}

/// A phone by id, row-locked for the rest of the transaction.
pub async fn get_locked(tx: &mut Tx, id: &str) -> Result<Phone> {
    let sql = format!("{COLS} WHERE id = ?{}", tx.lock_suffix());
    decode(&super::one(tx, "phone", &sql, &[id.into()]).await?)
}

/// The phone holding lease `lease_id`, row-locked (the lease row itself is not locked, so
/// this keeps the phone-then-lease order of `store`). `NotFound("lease")` if no such lease.
pub async fn get_locked_by_lease(tx: &mut Tx, lease_id: &str) -> Result<Phone> {
    let sql = format!(
        "{COLS} WHERE id = (SELECT phone_id FROM leases WHERE id = ?){}",
        tx.lock_suffix()
    );
    decode(&super::one(tx, "lease", &sql, &[lease_id.into()]).await?)
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
        && leases::dispatch(tx, &phone.profile_id).await? > 0
    {
        return get(tx, &phone.id).await;
    }
    Ok(phone)
}

/// Records the VMM API socket the agent reported (used by streaming to reach the phone).
pub async fn set_api_socket(tx: &mut Tx, phone_id: &str, socket: &str) -> Result<()> {
    tx.execute(
        "UPDATE phones SET api_socket = ? WHERE id = ?",
        &[socket.into(), phone_id.into()],
    )
    .await?;
    Ok(())
}

/// Brings every profile's live phone count to its `pool_size`: creates phones on the hosts
/// with most room, and stops surplus free phones. Returns how many phones were created.
pub async fn reconcile_pools(tx: &mut Tx) -> Result<usize> {
    let mut created = 0;
    for profile in profiles::list(tx).await? {
        profiles::get_locked(tx, &profile.id).await?;
        let live = tx
            .query(
                &format!(
                    "{COLS} WHERE profile_id = ? AND state NOT IN ('stopped', 'failed', 'lost') ORDER BY created_ms DESC, id"
                ),
                &[(&profile.id).into()],
            )
            .await?;
        let live: Vec<Phone> = live.iter().map(decode).collect::<Result<_>>()?;
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
