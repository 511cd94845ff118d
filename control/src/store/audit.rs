//! The audit log: every state change by a user, an agent or the scheduler leaves a line.
//! Lines addressed to a user (`notify_user`) double as that user's notifications.

use crate::db::{Tx, Value};
use crate::error::Result;
use crate::ids::new_id;
use crate::model::AuditEvent;

/// Appends one audit line.
pub async fn record(
    tx: &mut Tx,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
    notify_user: Option<&str>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO audit (id, at_ms, actor, action, target, detail, notify_user) VALUES (?, ?, ?, ?, ?, ?, ?)",
        &[
            new_id("ev").into(),
            crate::now_ms().into(),
            actor.into(),
            action.into(),
            target.into(),
            detail.into(),
            notify_user.into(),
        ],
    )
    .await?;
    Ok(())
}

const COLS: &str = "SELECT id, at_ms, actor, action, target, detail, notify_user FROM audit";

fn decode(r: &crate::db::Row) -> Result<AuditEvent> {
    Ok(AuditEvent {
        id: r.text(0)?,
        at_ms: r.int(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        target: r.text(4)?,
        detail: r.text(5)?,
        notify_user: r.opt_text(6)?,
    })
}

/// The newest `limit` lines, optionally only those addressed to one user, newest first.
pub async fn list(tx: &mut Tx, notify_user: Option<&str>, limit: i64) -> Result<Vec<AuditEvent>> {
    let rows = match notify_user {
        Some(u) => {
            tx.query(
                &format!("{COLS} WHERE notify_user = ? ORDER BY at_ms DESC, id DESC LIMIT ?"),
                &[u.into(), Value::Int(limit)],
            )
            .await?
        }
        None => {
            tx.query(
                &format!("{COLS} ORDER BY at_ms DESC, id DESC LIMIT ?"),
                &[Value::Int(limit)],
            )
            .await?
        }
    };
    rows.iter().map(decode).collect()
}
