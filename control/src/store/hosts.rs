//! Hosts: registration, heartbeats, and losing hosts that stop heartbeating.

use crate::db::{Row, Tx};
use crate::error::Result;
use crate::ids::new_id;
use crate::model::Host;
use crate::scheduler::HostLoad;

const COLS: &str = "SELECT id, name, state, vcpus, memory_mib, max_phones, last_heartbeat_ms, created_ms FROM hosts";

fn decode(r: &Row) -> Result<Host> {
    Ok(Host {
        id: r.text(0)?,
        name: r.text(1)?,
        state: r.text(2)?,
        vcpus: r.int(3)?,
        memory_mib: r.int(4)?,
        max_phones: r.int(5)?,
        last_heartbeat_ms: r.int(6)?,
        created_ms: r.int(7)?,
    })
}

/// Where the control service reaches a host agent's stream relay (see
/// `cloudphone_stream::relay`), with the bearer key the agent generated. Kept out of [`Host`]
/// so that no listing can return the key. No `Debug`, for the same reason.
#[derive(Clone, PartialEq, Eq)]
pub struct HostRelay {
    /// `http://host:port` as reachable from the control service.
    pub url: String,
    /// Bearer key the relay accepts.
    pub key: String,
}

/// Registers a host by name, or updates the capacity and relay of an existing one (agent
/// restart: a new relay key, or none when the agent now runs beside the control service).
/// The caller records it in the audit log.
pub async fn register(
    tx: &mut Tx,
    name: &str,
    vcpus: i64,
    memory_mib: i64,
    max_phones: i64,
    relay: Option<&HostRelay>,
) -> Result<Host> {
    let now = crate::now_ms();
    let (relay_url, relay_key) = (relay.map(|r| &r.url), relay.map(|r| &r.key));
    let existing = tx
        .query_opt(
            &format!("{COLS} WHERE name = ?{}", tx.lock_suffix()),
            &[name.into()],
        )
        .await?;
    let id = match existing {
        Some(r) => {
            let id = r.text(0)?;
            tx.execute(
                "UPDATE hosts SET vcpus = ?, memory_mib = ?, max_phones = ?, last_heartbeat_ms = ?, relay_url = ?, relay_key = ? WHERE id = ?",
                &[vcpus.into(), memory_mib.into(), max_phones.into(), now.into(), relay_url.into(), relay_key.into(), (&id).into()],
            )
            .await?;
            id
        }
        None => {
            let id = new_id("h");
            tx.execute(
                "INSERT INTO hosts (id, name, state, vcpus, memory_mib, max_phones, last_heartbeat_ms, created_ms, relay_url, relay_key) VALUES (?, ?, 'online', ?, ?, ?, ?, ?, ?, ?)",
                &[(&id).into(), name.into(), vcpus.into(), memory_mib.into(), max_phones.into(), now.into(), now.into(), relay_url.into(), relay_key.into()],
            )
            .await?;
            id
        }
    };
    get(tx, &id).await
}

/// The relay of host `id`, `None` when its VMM sockets are local to the control service.
pub async fn relay(tx: &mut Tx, id: &str) -> Result<Option<HostRelay>> {
    let row = super::one(
        tx,
        "host",
        "SELECT relay_url, relay_key FROM hosts WHERE id = ?",
        &[id.into()],
    )
    .await?;
    Ok(match (row.opt_text(0)?, row.opt_text(1)?) {
        (Some(url), Some(key)) => Some(HostRelay { url, key }),
        _ => None,
    })
}

/// A host by id.
pub async fn get(tx: &mut Tx, id: &str) -> Result<Host> {
    decode(&super::one(tx, "host", &format!("{COLS} WHERE id = ?"), &[id.into()]).await?)
}

/// All hosts by name.
pub async fn list(tx: &mut Tx) -> Result<Vec<Host>> {
    tx.query(&format!("{COLS} ORDER BY name"), &[])
        .await?
        .iter()
        .map(decode)
        .collect()
}

/// Capacity and current use of every online host (input to `scheduler::place`).
pub async fn loads(tx: &mut Tx) -> Result<Vec<HostLoad>> {
    let rows = tx
        .query(
            "SELECT h.id, h.vcpus, h.memory_mib, h.max_phones, \
             CAST(COALESCE(SUM(pr.vcpus), 0) AS BIGINT), CAST(COALESCE(SUM(pr.memory_mib), 0) AS BIGINT), COUNT(p.id) \
             FROM hosts h LEFT JOIN phones p ON p.host_id = h.id AND p.state NOT IN ('stopped', 'failed', 'lost') \
             LEFT JOIN profiles pr ON pr.id = p.profile_id \
             WHERE h.state = 'online' GROUP BY h.id, h.vcpus, h.memory_mib, h.max_phones ORDER BY h.id",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(HostLoad {
                host_id: r.text(0)?,
                vcpus: r.int(1)?,
                memory_mib: r.int(2)?,
                max_phones: r.int(3)?,
                used_vcpus: r.int(4)?,
                used_memory_mib: r.int(5)?,
                phones: r.int(6)?,
            })
        })
        .collect()
}
