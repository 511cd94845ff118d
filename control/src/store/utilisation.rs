//! Fleet utilisation history: the scheduler samples hosts, phones and the queue at a fixed
//! period, so operators see load over time (the operator page's chart) and not just now.

use crate::db::{Tx, Value};
use crate::error::Result;
use crate::model::UtilisationSample;

/// How long samples are kept (a week: enough to see daily peaks).
pub const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Stores `sample` (a second sample in the same millisecond is dropped) and prunes samples
/// older than [`RETENTION_MS`].
pub async fn record(tx: &mut Tx, s: &UtilisationSample) -> Result<()> {
    tx.execute(
        "INSERT INTO utilisation (at_ms, hosts_online, capacity, phones, assigned, queued) \
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (at_ms) DO NOTHING",
        &[
            s.at_ms.into(),
            s.hosts_online.into(),
            s.capacity.into(),
            s.phones.into(),
            s.assigned.into(),
            s.queued.into(),
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM utilisation WHERE at_ms < ?",
        &[Value::Int(s.at_ms - RETENTION_MS)],
    )
    .await?;
    Ok(())
}

/// Samples taken at or after `since_ms`, oldest first, at most `limit`.
pub async fn since(tx: &mut Tx, since_ms: i64, limit: i64) -> Result<Vec<UtilisationSample>> {
    tx.query(
        "SELECT at_ms, hosts_online, capacity, phones, assigned, queued FROM utilisation \
         WHERE at_ms >= ? ORDER BY at_ms LIMIT ?",
        &[Value::Int(since_ms), Value::Int(limit)],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(UtilisationSample {
            at_ms: r.int(0)?,
            hosts_online: r.int(1)?,
            capacity: r.int(2)?,
            phones: r.int(3)?,
            assigned: r.int(4)?,
            queued: r.int(5)?,
        })
    })
    .collect()
}
