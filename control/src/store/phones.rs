//! Phones: the state machine applied to stored rows, visibility, and the warm pool.

use crate::db::{Row, Tx, Value};
use crate::error::{Error, Result};
use crate::model::{Phone, PhoneState, Role, User};

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

/// Live phones of a profile (not stopped, failed or lost), newest first: what a warm pool
/// counts and shrinks.
pub async fn live_of_profile(tx: &mut Tx, profile_id: &str) -> Result<Vec<Phone>> {
    tx.query(
        &format!(
            "{COLS} WHERE profile_id = ? AND state NOT IN ('stopped', 'failed', 'lost') ORDER BY created_ms DESC, id"
        ),
        &[profile_id.into()],
    )
    .await?
    .iter()
    .map(decode)
    .collect()
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
