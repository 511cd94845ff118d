//! Hosts: enrolment (a one-time join token traded for the host's own key), registration of
//! capacity and relay, and the capacity the scheduler may place phones on.

use crate::db::{Row, Tx};
use crate::error::Result;
use crate::ids::new_id;
use std::collections::HashMap;

use crate::model::{Host, HostUse};
use crate::scheduler::{counted_memory_mib, HostLoad, OvercommitPolicy};
use crate::wire::hosts::HostUsage;

const COLS: &str =
    "SELECT id, name, state, vcpus, memory_mib, max_phones, last_heartbeat_ms, created_ms, \
    vcpu_overcommit_pct, memory_overcommit_pct, memory_reserve_mib, mem_available_mib, \
    state_root, cap_vcpus, cap_memory_mib, cap_max_phones, cpu_busy_limit_pct, cpu_busy_pct \
    FROM hosts";

fn decode(r: &Row, uses: &HashMap<String, HostUse>) -> Result<Host> {
    let id = r.text(0)?;
    Ok(Host {
        load: uses.get(&id).cloned().unwrap_or_default(),
        id,
        name: r.text(1)?,
        state: r.text(2)?,
        vcpus: r.int(3)?,
        memory_mib: r.int(4)?,
        max_phones: r.int(5)?,
        last_heartbeat_ms: r.int(6)?,
        created_ms: r.int(7)?,
        policy: OvercommitPolicy {
            vcpu_pct: r.int(8)?,
            memory_pct: r.int(9)?,
            reserve_mib: r.int(10)?,
            cpu_busy_limit_pct: r.int(16)?,
        },
        mem_available_mib: r.opt_int(11)?,
        cpu_busy_pct: r.opt_int(17)?,
        state_root: r.text(12)?,
        cap_vcpus: r.int(13)?,
        cap_memory_mib: r.int(14)?,
        cap_max_phones: r.int(15)?,
    })
}

/// Committed and used resources of the live phones of every host (or of one).
async fn uses(tx: &mut Tx, host_id: Option<&str>) -> Result<HashMap<String, HostUse>> {
    let (filter, params) = match host_id {
        Some(id) => (" AND p.host_id = ?", vec![id.into()]),
        None => ("", vec![]),
    };
    let rows = tx
        .query(
            &format!(
                "SELECT p.host_id, pr.vcpus, pr.memory_mib, p.private_mib FROM phones p \
                 JOIN profiles pr ON pr.id = p.profile_id \
                 WHERE p.state NOT IN ('stopped', 'failed', 'lost'){filter}"
            ),
            &params,
        )
        .await?;
    let mut out: HashMap<String, HostUse> = HashMap::new();
    for r in &rows {
        let (nominal, private) = (r.int(2)?, r.opt_int(3)?);
        let u = out.entry(r.text(0)?).or_default();
        u.phones += 1;
        u.committed_vcpus += r.int(1)?;
        u.committed_memory_mib += nominal;
        u.used_memory_mib += private.unwrap_or(0);
        u.counted_memory_mib += counted_memory_mib(nominal, private);
    }
    Ok(out)
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

/// What an operator declares when enrolling a host: where its agent keeps phones and the
/// most it may ever claim (a hostile agent cannot advertise more and draw phones to itself).
pub struct Enrolment {
    pub state_root: String,
    pub cap_vcpus: i64,
    pub cap_memory_mib: i64,
    pub cap_max_phones: i64,
}

/// Enrols host `name` with a join token whose SHA-256 is `join_hash`. A host enrolled before
/// is enrolled again: its key stops working (a lost or stolen key is replaced this way) and
/// it gets no new phones until its agent joins and registers again. New hosts start offline with no capacity
/// until their agent registers. The caller records it in the audit log.
pub async fn enrol(tx: &mut Tx, name: &str, e: &Enrolment, join_hash: &str) -> Result<Host> {
    let existing = tx
        .query_opt(
            &format!("SELECT id FROM hosts WHERE name = ?{}", tx.lock_suffix()),
            &[name.into()],
        )
        .await?;
    let caps = [
        e.state_root.as_str().into(),
        e.cap_vcpus.into(),
        e.cap_memory_mib.into(),
        e.cap_max_phones.into(),
        join_hash.into(),
    ];
    let id = match existing {
        Some(r) => {
            let id = r.text(0)?;
            let mut params = caps.to_vec();
            params.push((&id).into());
            tx.execute(
                "UPDATE hosts SET state_root = ?, cap_vcpus = ?, cap_memory_mib = ?, cap_max_phones = ?, \
                 join_hash = ?, key_hash = NULL, vcpus = 0, memory_mib = 0, max_phones = 0 WHERE id = ?",
                &params,
            )
            .await?;
            id
        }
        None => {
            let id = new_id("h");
            let mut params = vec![(&id).into(), name.into(), crate::now_ms().into()];
            params.extend(caps);
            tx.execute(
                "INSERT INTO hosts (id, name, state, vcpus, memory_mib, max_phones, last_heartbeat_ms, created_ms, \
                 state_root, cap_vcpus, cap_memory_mib, cap_max_phones, join_hash) \
                 VALUES (?, ?, 'offline', 0, 0, 0, 0, ?, ?, ?, ?, ?, ?)",
                &params,
            )
            .await?;
            id
        }
    };
    get(tx, &id).await
}

/// Trades a join token (by its hash) for a host key (stored as `key_hash`): the token works
/// once. `None` when no host waits for this token.
pub async fn join(tx: &mut Tx, join_hash: &str, key_hash: &str) -> Result<Option<Host>> {
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT id FROM hosts WHERE join_hash = ?{}",
                tx.lock_suffix()
            ),
            &[join_hash.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let id = row.text(0)?;
    tx.execute(
        "UPDATE hosts SET join_hash = NULL, key_hash = ? WHERE id = ?",
        &[key_hash.into(), (&id).into()],
    )
    .await?;
    get(tx, &id).await.map(Some)
}

/// The host whose key hashes to `key_hash`, if any.
pub async fn by_key(tx: &mut Tx, key_hash: &str) -> Result<Option<Host>> {
    let Some(row) = tx
        .query_opt(&format!("{COLS} WHERE key_hash = ?"), &[key_hash.into()])
        .await?
    else {
        return Ok(None);
    };
    let uses = uses(tx, Some(&row.text(0)?)).await?;
    decode(&row, &uses).map(Some)
}

/// The capacity an agent claims (already checked against its caps) and its relay.
pub struct Claim<'a> {
    pub vcpus: i64,
    pub memory_mib: i64,
    pub max_phones: i64,
    pub relay: Option<&'a HostRelay>,
}

/// Records host `id`'s claimed capacity and relay (agent start: a new relay key, or none
/// when the agent now runs beside the control service). The caller audits it.
pub async fn register(tx: &mut Tx, id: &str, c: &Claim<'_>) -> Result<Host> {
    let (relay_url, relay_key) = (c.relay.map(|r| &r.url), c.relay.map(|r| &r.key));
    tx.execute(
        "UPDATE hosts SET vcpus = ?, memory_mib = ?, max_phones = ?, relay_url = ?, relay_key = ? WHERE id = ?",
        &[c.vcpus.into(), c.memory_mib.into(), c.max_phones.into(), relay_url.into(), relay_key.into(), id.into()],
    )
    .await?;
    get(tx, id).await
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
    let row = super::one(tx, "host", &format!("{COLS} WHERE id = ?"), &[id.into()]).await?;
    decode(&row, &uses(tx, Some(id)).await?)
}

/// All hosts by name.
pub async fn list(tx: &mut Tx) -> Result<Vec<Host>> {
    let rows = tx.query(&format!("{COLS} ORDER BY name"), &[]).await?;
    let uses = uses(tx, None).await?;
    rows.iter().map(|r| decode(r, &uses)).collect()
}

/// Sets a host's overcommit policy (an operator's decision; the caller audits it).
pub async fn set_policy(tx: &mut Tx, id: &str, p: &OvercommitPolicy) -> Result<Host> {
    get(tx, id).await?;
    tx.execute(
        "UPDATE hosts SET vcpu_overcommit_pct = ?, memory_overcommit_pct = ?, memory_reserve_mib = ?, \
         cpu_busy_limit_pct = ? WHERE id = ?",
        &[
            p.vcpu_pct.into(),
            p.memory_pct.into(),
            p.reserve_mib.into(),
            p.cpu_busy_limit_pct.into(),
            id.into(),
        ],
    )
    .await?;
    get(tx, id).await
}

/// Stores what a host's agent measured: its available memory, its CPU busy share (kept from
/// the last heartbeat that had one) and, for each of ITS phones, private memory and CPU time.
/// Measurements naming another host's phone change nothing.
pub async fn record_usage(tx: &mut Tx, id: &str, usage: &HostUsage) -> Result<()> {
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE hosts SET mem_available_mib = ?, cpu_busy_pct = COALESCE(?, cpu_busy_pct) WHERE id = ?",
        &[
            int(usage.mem_available_mib).into(),
            usage.cpu_busy_pct.map(int).into(),
            id.into(),
        ],
    )
    .await?;
    for p in &usage.phones {
        tx.execute(
            "UPDATE phones SET private_mib = ?, cpu_ms = ? WHERE id = ? AND host_id = ?",
            &[
                int(p.private_mib).into(),
                int(p.cpu_ms).into(),
                (&p.id).into(),
                id.into(),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Capacity, policy and current use of every online host (input to `scheduler::place`).
pub async fn loads(tx: &mut Tx) -> Result<Vec<HostLoad>> {
    let rows = tx
        .query(&format!("{COLS} WHERE state = 'online' ORDER BY id"), &[])
        .await?;
    let uses = uses(tx, None).await?;
    rows.iter()
        .map(|r| {
            let h = decode(r, &uses)?;
            Ok(HostLoad {
                host_id: h.id,
                vcpus: h.vcpus,
                memory_mib: h.memory_mib,
                max_phones: h.max_phones,
                policy: h.policy,
                mem_available_mib: h.mem_available_mib,
                cpu_busy_pct: h.cpu_busy_pct,
                used_vcpus: h.load.committed_vcpus,
                used_memory_mib: h.load.committed_memory_mib,
                counted_memory_mib: h.load.counted_memory_mib,
                phones: h.load.phones,
            })
        })
        .collect()
}
