//! Fleet utilisation history: the scheduler samples hosts, phones and the queue at a fixed
//! period, so operators see load over time (the operator page's chart) and not just now.

use crate::db::{Tx, Value};
use crate::error::Result;
use crate::model::UtilisationSample;
use crate::store::{phones, queue};

/// How long samples are kept (a week: enough to see daily peaks).
pub const RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;

/// Phone states that do not occupy a slot.
const GONE: [&str; 3] = ["stopped", "failed", "lost"];

/// The fleet now: online hosts and their slots, live and assigned phones, queue length.
pub async fn sample(tx: &mut Tx, at_ms: i64) -> Result<UtilisationSample> {
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
