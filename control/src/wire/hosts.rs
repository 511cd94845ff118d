//! `/api/v1/hosts` bodies: what a host agent registers, heartbeats and reports (see
//! `api::hosts` for the protocol).

use serde::{Deserialize, Serialize};

use crate::model::{Host, Phone, PhoneState, Profile};

/// `POST /hosts` body (operators): enrol a host, or enrol it again to replace its key; also
/// the arguments of `cloudphone hosts enrol`.
#[derive(Serialize, Deserialize, Debug, Clone, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct EnrolHost {
    /// The host's name (unique).
    pub name: String,
    /// Absolute, canonical directory its agent keeps phones under (the agent's
    /// `--state-dir`): every VMM socket path it reports must lie inside.
    #[arg(long)]
    pub state_root: String,
    /// Most vCPUs the agent may claim.
    #[arg(long)]
    pub vcpus: u32,
    /// Most memory (MiB) the agent may claim.
    #[arg(long)]
    pub memory_mib: u32,
    /// Most phones the agent may claim.
    #[arg(long)]
    pub max_phones: u32,
}

/// `POST /hosts` reply: the host and its one-time join token (shown only here).
#[derive(Serialize, Deserialize)]
pub struct Enrolled {
    pub host: Host,
    /// Give to the agent once (`--join-token`); it trades it for its own key.
    pub join_token: String,
}

/// `POST /hosts/join` body: the join token an operator got at enrolment.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinHost {
    pub join_token: String,
}

/// `POST /hosts/join` reply: the host's own key, shown only here; the agent keeps it.
#[derive(Serialize, Deserialize)]
pub struct Joined {
    pub host: Host,
    /// Bearer key of every later host route.
    pub host_key: String,
}

/// `POST /hosts/register` body (host key): the capacity the agent offers, within its
/// enrolment caps, and its stream relay if it has one.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    /// vCPUs the scheduler may give phones on this host.
    pub vcpus: u32,
    /// Memory the scheduler may give phones on this host.
    pub memory_mib: u32,
    /// Most phones this host runs at once.
    pub max_phones: u32,
    /// Where the control service reaches this agent's stream relay (`http://host:port`);
    /// absent when the agent's VMM sockets are on the control service's machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    /// Bearer key the relay accepts (with `relay_url`; stored, never returned by any API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_key: Option<String>,
}

/// `POST /hosts/{id}/heartbeat` body: phones whose VMM is running on this host.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Ids of the phones whose VMM runs here (the server marks the others lost).
    pub running: Vec<String>,
    /// What the agent measured since its last heartbeat (absent from agents that do not
    /// measure: the scheduler then counts their phones at nominal size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<HostUsage>,
}

/// A host's measured use: the scheduler places phones by it (see `scheduler::HostLoad`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostUsage {
    /// `MemAvailable` of the host, in MiB.
    pub mem_available_mib: u64,
    /// Percent of all the host's CPUs busy (not idle or waiting for I/O) since the agent's
    /// previous heartbeat; absent on the first one and from agents that do not measure it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_busy_pct: Option<u64>,
    /// Each running phone's VMM.
    pub phones: Vec<PhoneUsage>,
}

/// One phone's VMM process as measured from `/proc`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PhoneUsage {
    /// The phone's id.
    pub id: String,
    /// Private (unshared) resident memory: `Private_Clean + Private_Dirty` of `smaps_rollup`;
    /// what the phone costs the host beyond pages it shares with others.
    pub private_mib: u64,
    /// Proportional set size (shared pages split among their users).
    pub pss_mib: u64,
    /// CPU time the VMM used since it started (user + system).
    pub cpu_ms: u64,
}

/// A phone the host should act on, with its profile.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DesiredPhone {
    /// The phone and the state the agent converges it to.
    pub phone: Phone,
    /// How to boot it.
    pub profile: Profile,
}

/// Heartbeat reply.
#[derive(Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The host as the server now sees it.
    pub host: Host,
    /// Every phone this host should act on.
    pub phones: Vec<DesiredPhone>,
    /// Silence longer than this marks the host offline (its phones are lost only after the
    /// service's longer `--lost-after-ms`).
    pub heartbeat_timeout_ms: i64,
}

/// `PUT /hosts/{id}/phones/{phone_id}/state` body.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateReport {
    /// The state the phone reached.
    pub state: PhoneState,
    /// The generation the agent acted on; a report for an older reset is refused.
    pub generation: i64,
    /// Why, for the audit log.
    #[serde(default)]
    pub reason: String,
    /// Path of the VMM API socket on the host.
    pub api_socket: Option<String>,
}
