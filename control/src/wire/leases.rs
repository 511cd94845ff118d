//! `/api/v1/leases` bodies: asking for a phone and renewing it.

use serde::{Deserialize, Serialize};

use crate::model::{Lease, QueueEntry};

/// `POST /leases` body.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    /// Profile id or name.
    pub profile: String,
    /// Lease length in seconds (1..=86400), default 3600.
    pub duration_s: Option<u64>,
    /// Keep the phone's disk between leases.
    #[serde(default)]
    pub persistent: bool,
    /// Queue when nothing is free (default true); false fails with 409 instead.
    pub wait: Option<bool>,
}

/// Outcome of `POST /leases`: 201 with `lease`, or 202 with `queue` (poll `/queue/{id}`).
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum AcquireResponse {
    /// A phone was free: the lease is active.
    Granted {
        /// The new lease.
        lease: Lease,
    },
    /// Nothing was free: the request waits in the queue.
    Queued {
        /// The queue entry to poll.
        queue: QueueEntry,
    },
}

/// `?all=true` includes ended leases.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFilter {
    /// Include released, expired and lost leases.
    #[serde(default)]
    pub all: bool,
}

/// `POST /leases/{id}/renew` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// New length in seconds, counted from now.
    pub duration_s: u64,
}
