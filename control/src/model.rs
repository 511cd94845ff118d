//! Domain types shared by the store, the API and the agent.

use serde::{Deserialize, Serialize};

use crate::scheduler::OvercommitPolicy;

/// What a user may do. Operators see and manage everything; users only their own phones.
/// Host agents are not users: each authenticates with its own host key (`api::hosts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Operator,
}

impl Role {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
        }
    }

    /// Parses the stored spelling; unknown roles are an error, never a default.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "operator" => Some(Role::Operator),
            _ => None,
        }
    }
}

/// The stored spelling parses too (the CLI's `--role`).
impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}: use user or operator"))
    }
}

/// Lifecycle of a phone. Transitions are checked by [`PhoneState::can_become`] so a bad
/// agent report or a race can never, say, assign a phone that is still booting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneState {
    Creating,
    Booting,
    Ready,
    Assigned,
    Resetting,
    Stopping,
    Stopped,
    Failed,
    Lost,
}

impl PhoneState {
    /// Every state, for metrics and property tests.
    pub const ALL: [PhoneState; 9] = [
        PhoneState::Creating,
        PhoneState::Booting,
        PhoneState::Ready,
        PhoneState::Assigned,
        PhoneState::Resetting,
        PhoneState::Stopping,
        PhoneState::Stopped,
        PhoneState::Failed,
        PhoneState::Lost,
    ];

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PhoneState::Creating => "creating",
            PhoneState::Booting => "booting",
            PhoneState::Ready => "ready",
            PhoneState::Assigned => "assigned",
            PhoneState::Resetting => "resetting",
            PhoneState::Stopping => "stopping",
            PhoneState::Stopped => "stopped",
            PhoneState::Failed => "failed",
            PhoneState::Lost => "lost",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<PhoneState> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether a phone in this state occupies host capacity (counts toward the pool).
    pub fn is_live(self) -> bool {
        !matches!(
            self,
            PhoneState::Stopped | PhoneState::Failed | PhoneState::Lost
        )
    }

    /// The state machine. `Lost` is left only when the agent comes back: a phone whose VMM
    /// survived is reset (its lease ended), one whose VMM is gone is stopped.
    pub fn can_become(self, to: PhoneState) -> bool {
        use PhoneState::*;
        match (self, to) {
            (Creating, Booting) => true,
            (Booting, Ready) => true,
            (Ready, Assigned) => true,
            (Assigned, Resetting) => true,
            // Release of a persistent phone: it keeps its overlay and waits for its owner.
            (Assigned, Ready) => true,
            (Ready, Resetting) => true,
            (Resetting, Ready) => true,
            (Lost, Resetting) | (Lost, Stopped) => true,
            (Stopping, Stopped) => true,
            (from, Stopping) => from.is_live() && from != Stopping,
            (from, Failed) | (from, Lost) => from.is_live(),
            _ => false,
        }
    }
}

/// Lifecycle of a lease; everything but `Active` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    Active,
    Released,
    Expired,
    /// The phone's host disappeared or the phone failed under the lease.
    Lost,
}

impl LeaseState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Released => "released",
            LeaseState::Expired => "expired",
            LeaseState::Lost => "lost",
        }
    }
    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Released, Self::Expired, Self::Lost]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub max_phones: i64,
    pub max_minutes_per_day: i64,
    pub created_ms: i64,
}

/// An adb public key registered by a user: the phones that user leases accept it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdbKey {
    pub id: String,
    pub user_id: String,
    /// `SHA256:...` of the key struct, to tell keys apart in listings.
    pub fingerprint: String,
    /// Base64 of the Android RSA public key (as in adbkey.pub before the space).
    pub key: String,
    /// Free text (adbkey.pub's `user@host`).
    pub comment: String,
    pub created_ms: i64,
}

/// A device profile: what a phone looks like and costs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub id: String,
    pub name: String,
    pub width: i64,
    pub height: i64,
    pub dpi: i64,
    pub vcpus: i64,
    pub memory_mib: i64,
    /// Base disk image file name, resolved by each agent inside its `--image-dir`.
    pub image: String,
    /// Phones kept booted for this profile (the warm pool).
    pub pool_size: i64,
    pub created_ms: i64,
}

/// A host running an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Host {
    pub id: String,
    pub name: String,
    /// `online` or `offline` (missed heartbeats).
    pub state: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub max_phones: i64,
    pub last_heartbeat_ms: i64,
    pub created_ms: i64,
    /// Directory the agent keeps its phones under; every path it reports lies inside.
    pub state_root: String,
    /// Most vCPUs, memory and phones the agent may claim (set at enrolment).
    pub cap_vcpus: i64,
    pub cap_memory_mib: i64,
    pub cap_max_phones: i64,
    /// How far the scheduler may promise more than the host has.
    pub policy: OvercommitPolicy,
    /// `MemAvailable` its agent last measured; absent before the first measurement.
    pub mem_available_mib: Option<i64>,
    /// Percent of its CPUs its agent last measured busy; absent before the first measurement.
    pub cpu_busy_pct: Option<i64>,
    /// What its live phones are promised and what they use.
    pub load: HostUse,
}

/// Committed (nominal) versus used (measured) resources of a host's live phones, the numbers
/// an operator packs hosts by.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostUse {
    /// Live phones (not stopped, failed or lost).
    pub phones: i64,
    /// Sum of their profiles' vCPUs.
    pub committed_vcpus: i64,
    /// Sum of their profiles' memory.
    pub committed_memory_mib: i64,
    /// Sum of their measured private memory (phones not yet measured count nothing here).
    pub used_memory_mib: i64,
    /// What placement counts them as (see `scheduler::counted_memory_mib`).
    pub counted_memory_mib: i64,
}

/// A phone (one VM on one host).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Phone {
    pub id: String,
    pub profile_id: String,
    pub host_id: String,
    pub state: PhoneState,
    /// Bumped on every reset so the agent can tell a new reset request from an old one.
    pub generation: i64,
    /// Owner of a persistent phone waiting between leases.
    pub reserved_for: Option<String>,
    /// The VMM's API socket on its host, as the agent reported it.
    pub api_socket: Option<String>,
    /// Why the phone failed or was lost.
    pub reason: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A lease: one user holds one phone until `expires_ms` (renewable) or release.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub id: String,
    pub user_id: String,
    pub phone_id: String,
    pub profile_id: String,
    pub state: LeaseState,
    pub persistent: bool,
    pub started_ms: i64,
    pub expires_ms: i64,
    pub ended_ms: Option<i64>,
}

/// A waiting (or served) lease request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueueEntry {
    pub id: String,
    /// Global arrival order.
    pub seq: i64,
    pub user_id: String,
    pub profile_id: String,
    pub duration_s: i64,
    pub persistent: bool,
    /// `waiting`, `granted` or `cancelled`.
    pub state: String,
    /// Set once granted.
    pub lease_id: Option<String>,
    /// 1-based place among waiting entries of the profile (absent once not waiting).
    pub position: Option<i64>,
    /// Estimated milliseconds until a phone is free for this entry.
    pub eta_ms: Option<i64>,
    pub created_ms: i64,
}

/// One audit log line: who did what to what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub id: String,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    /// The user this event was addressed to (shown in their `/events`).
    pub notify_user: Option<String>,
}

/// The fleet at one instant, as the scheduler samples it for the utilisation history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UtilisationSample {
    pub at_ms: i64,
    pub hosts_online: i64,
    /// Phone slots on online hosts.
    pub capacity: i64,
    /// Phones that exist (not stopped, failed or lost).
    pub phones: i64,
    /// Phones leased to a user.
    pub assigned: i64,
    /// Lease requests waiting in the queue.
    pub queued: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use PhoneState::*;

    #[test]
    fn lifecycle_paths_are_allowed() {
        for path in [
            &[Creating, Booting, Ready, Assigned, Resetting, Ready][..],
            &[Ready, Assigned, Ready],
            &[Ready, Stopping, Stopped],
            &[Assigned, Lost, Resetting, Ready],
            &[Booting, Failed],
            &[Lost, Stopped],
        ] {
            for w in path.windows(2) {
                assert!(w[0].can_become(w[1]), "{:?} -> {:?}", w[0], w[1]);
            }
        }
    }

    #[test]
    fn illegal_transitions_are_rejected() {
        for (a, b) in [
            (Booting, Assigned),
            (Creating, Ready),
            (Stopped, Ready),
            (Failed, Ready),
            (Stopped, Lost),
            (Resetting, Assigned),
            (Stopping, Stopping),
            (Lost, Ready),
        ] {
            assert!(!a.can_become(b), "{a:?} -> {b:?} must be rejected");
        }
    }

    #[test]
    fn names_round_trip() {
        for s in PhoneState::ALL {
            assert_eq!(PhoneState::parse(s.as_str()), Some(s));
        }
        assert_eq!(PhoneState::parse("READY"), None);
        assert_eq!(Role::parse("root"), None);
    }

    proptest! {
        /// Random walks through accepted transitions never leave a final state and only
        /// reach `Assigned` from `Ready`.
        #[test]
        fn walks_respect_the_machine(steps in proptest::collection::vec(0usize..9, 1..40)) {
            let mut s = Creating;
            for i in steps {
                let to = PhoneState::ALL[i];
                if s.can_become(to) {
                    prop_assert!(s != Stopped && s != Failed, "left final state {s:?}");
                    if to == Assigned { prop_assert_eq!(s, Ready); }
                    s = to;
                }
            }
        }
    }

    #[test]
    fn proptest_case_count() {
        // proptest runs 256 cases per property by default (see PROPTEST_CASES).
        eprintln!(
            "fuzz phone-state-walks: {} cases",
            ProptestConfig::default().cases
        );
    }
}
