//! Scheduling decisions as plain functions: no database, no HTTP, easy to test.

use serde::{Deserialize, Serialize};

/// Expected time a reset takes before a returned phone can be handed out again (ms).
pub const RESET_ESTIMATE_MS: i64 = 5_000;

/// Longest lease a single request or renewal may ask for.
pub const MAX_LEASE_S: i64 = 24 * 3600;

/// ETA in ms for the waiter at 1-based `position`, given the remaining ms of the leases that
/// will free phones (`remaining`, any order) and the typical lease length for waiters after
/// the first round. `None` when no phone of the profile exists to wait for.
pub fn queue_eta_ms(position: i64, remaining: &[i64], typical_lease_ms: i64) -> Option<i64> {
    if remaining.is_empty() || position < 1 {
        return None;
    }
    let mut sorted: Vec<i64> = remaining.iter().map(|r| (*r).max(0)).collect();
    sorted.sort_unstable();
    let n = sorted.len() as i64;
    let idx = (position - 1) % n;
    let rounds = (position - 1) / n;
    Some(
        sorted[idx as usize]
            .saturating_add(
                rounds.saturating_mul(typical_lease_ms.saturating_add(RESET_ESTIMATE_MS)),
            )
            .saturating_add(RESET_ESTIMATE_MS),
    )
}

/// How far a host may promise more than it has, set per host by an operator (`cloudphone hosts
/// policy`). Phones in a cloud fleet mostly idle (a warm pool waits, a leased phone shows one
/// app), so reserving every phone's nominal vCPUs and RAM leaves hosts nearly empty; the policy
/// trades that for a bounded risk, and the agent's measurements keep the risk visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OvercommitPolicy {
    /// vCPUs the host may promise, in percent of its own (500: five phone vCPUs per core).
    pub vcpu_pct: i64,
    /// Nominal phone RAM the host may promise, in percent of its memory: the bound on what
    /// happens if every phone grows to its nominal size at once (balloons reclaim the rest).
    pub memory_pct: i64,
    /// Memory the host keeps free: below it (as the agent measures `MemAvailable`) the host
    /// takes no new phones and its agent inflates the balloons of idle phones.
    pub reserve_mib: i64,
    /// Measured CPU busy share (percent of all the host's CPUs, over the agent's last
    /// heartbeat interval) above which the host takes no new phone: the vCPU ratio bounds
    /// what phones may ask for, this bounds what they are really doing (a host whose phones
    /// all run games is full at any ratio). 100 turns it off. Absent from older clients'
    /// bodies, which get the default.
    #[serde(default = "default_cpu_busy_limit_pct")]
    pub cpu_busy_limit_pct: i64,
}

/// [`OvercommitPolicy::cpu_busy_limit_pct`] by default: leave a tenth of the host for its
/// agent, encoders and the phones' bursts.
fn default_cpu_busy_limit_pct() -> i64 {
    90
}

impl Default for OvercommitPolicy {
    fn default() -> Self {
        OvercommitPolicy {
            vcpu_pct: 500,
            memory_pct: 200,
            reserve_mib: 512,
            cpu_busy_limit_pct: default_cpu_busy_limit_pct(),
        }
    }
}

impl OvercommitPolicy {
    /// Refuses policies that would let a host promise nothing or an absurd amount.
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=2000).contains(&self.vcpu_pct) {
            return Err(format!(
                "vcpu overcommit {} % is outside 100..=2000 %",
                self.vcpu_pct
            ));
        }
        if !(50..=1000).contains(&self.memory_pct) {
            return Err(format!(
                "memory overcommit {} % is outside 50..=1000 %",
                self.memory_pct
            ));
        }
        if !(0..=1 << 20).contains(&self.reserve_mib) {
            return Err(format!(
                "memory reserve {} MiB is outside 0..=1048576",
                self.reserve_mib
            ));
        }
        if !(10..=100).contains(&self.cpu_busy_limit_pct) {
            return Err(format!(
                "CPU busy limit {} % is outside 10..=100 %",
                self.cpu_busy_limit_pct
            ));
        }
        Ok(())
    }
}

/// Memory a live phone is counted with when placing the next one: what the agent last
/// measured as its private memory plus a margin for growth (an eighth of its nominal size, at
/// least 32 MiB), never more than its nominal size; a phone not yet measured (booting) counts
/// in full.
pub fn counted_memory_mib(nominal_mib: i64, measured_private_mib: Option<i64>) -> i64 {
    match measured_private_mib {
        Some(m) => (m.max(0) + (nominal_mib / 8).max(32)).min(nominal_mib),
        None => nominal_mib,
    }
}

/// Capacity of a host, its policy, and what its live phones already take.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    pub host_id: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub max_phones: i64,
    pub policy: OvercommitPolicy,
    /// `MemAvailable` the agent last measured; `None` before its first measurement.
    pub mem_available_mib: Option<i64>,
    /// CPU busy percent the agent last measured; `None` before its first measurement.
    pub cpu_busy_pct: Option<i64>,
    /// Nominal vCPUs of the live phones.
    pub used_vcpus: i64,
    /// Nominal memory of the live phones.
    pub used_memory_mib: i64,
    /// The live phones' [`counted_memory_mib`].
    pub counted_memory_mib: i64,
    pub phones: i64,
}

impl HostLoad {
    /// Whether one more phone of this size fits: a free slot, vCPUs and nominal memory within
    /// the overcommit policy, the phone's full size within what the live phones leave by use,
    /// the host not under memory pressure, and its measured CPU use within the policy's limit.
    pub fn fits(&self, vcpus: i64, memory_mib: i64) -> bool {
        let p = &self.policy;
        self.phones < self.max_phones
            && (self.used_vcpus + vcpus) * 100 <= self.vcpus * p.vcpu_pct
            && (self.used_memory_mib + memory_mib) * 100 <= self.memory_mib * p.memory_pct
            && self.counted_memory_mib + memory_mib <= self.memory_mib
            && self
                .mem_available_mib
                .is_none_or(|a| a >= p.reserve_mib + memory_mib)
            && self.cpu_busy_pct.is_none_or(|c| c <= p.cpu_busy_limit_pct)
    }
}

/// Picks the host with the most free phone slots (then memory by use, then the least measured
/// CPU use) that fits one more phone of the given size; `None` when no host fits.
pub fn place(hosts: &[HostLoad], vcpus: i64, memory_mib: i64) -> Option<&HostLoad> {
    hosts
        .iter()
        .filter(|h| h.fits(vcpus, memory_mib))
        .max_by_key(|h| {
            (
                h.max_phones - h.phones,
                h.memory_mib - h.counted_memory_mib,
                std::cmp::Reverse(h.cpu_busy_pct.unwrap_or(0)),
                std::cmp::Reverse(h.host_id.clone()),
            )
        })
}

/// Start of the UTC day containing `now_ms`.
pub fn day_start_ms(now_ms: i64) -> i64 {
    now_ms - now_ms.rem_euclid(86_400_000)
}

/// Phone-minutes a user spent today: the part of each lease `(started, ended_or_now)` that
/// falls inside the current UTC day, rounded up to whole minutes.
pub fn minutes_used_today(leases: &[(i64, Option<i64>)], now_ms: i64) -> i64 {
    let start = day_start_ms(now_ms);
    let ms: i64 = leases
        .iter()
        .map(|(s, e)| {
            let end = e.unwrap_or(now_ms).min(now_ms);
            (end - (*s).max(start)).max(0)
        })
        .sum();
    (ms + 59_999) / 60_000
}

/// Why a lease request is refused before any phone is looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum QuotaRefusal {
    Phones { limit: i64 },
    Minutes { limit: i64 },
}

/// Checks a request against the user's quotas. `held` counts active leases plus waiting
/// queue entries (a queued request already reserves quota so a user cannot flood the queue).
pub fn check_quota(
    held: i64,
    max_phones: i64,
    minutes_used: i64,
    max_minutes: i64,
) -> Result<(), QuotaRefusal> {
    if held >= max_phones {
        return Err(QuotaRefusal::Phones { limit: max_phones });
    }
    if minutes_used >= max_minutes {
        return Err(QuotaRefusal::Minutes { limit: max_minutes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_follows_lease_expiries_then_rounds() {
        let rem = [30_000, 10_000];
        assert_eq!(
            queue_eta_ms(1, &rem, 60_000),
            Some(10_000 + RESET_ESTIMATE_MS)
        );
        assert_eq!(
            queue_eta_ms(2, &rem, 60_000),
            Some(30_000 + RESET_ESTIMATE_MS)
        );
        assert_eq!(
            queue_eta_ms(3, &rem, 60_000),
            Some(10_000 + 65_000 + RESET_ESTIMATE_MS)
        );
        assert_eq!(queue_eta_ms(1, &[], 60_000), None);
        assert_eq!(queue_eta_ms(0, &rem, 60_000), None);
        assert_eq!(queue_eta_ms(i64::MAX, &rem, i64::MAX), Some(i64::MAX));
    }

    fn host(id: &str, phones: i64, mem_used: i64) -> HostLoad {
        HostLoad {
            host_id: id.into(),
            vcpus: 8,
            memory_mib: 8192,
            max_phones: 4,
            policy: OvercommitPolicy {
                vcpu_pct: 100,
                memory_pct: 100,
                reserve_mib: 0,
                cpu_busy_limit_pct: 100,
            },
            mem_available_mib: None,
            cpu_busy_pct: None,
            used_vcpus: phones * 2,
            used_memory_mib: mem_used,
            counted_memory_mib: mem_used,
            phones,
        }
    }

    #[test]
    fn placement_prefers_free_hosts_and_respects_capacity() {
        let hosts = [host("a", 3, 6000), host("b", 1, 2000)];
        assert_eq!(place(&hosts, 2, 2048).unwrap().host_id, "b");
        assert_eq!(place(&hosts[..1], 2, 4096), None);
        let full = [host("c", 4, 0)];
        assert_eq!(place(&full, 1, 1), None);
    }

    /// The case that left a pool empty: a 2-core host running one 2-vCPU phone takes eight
    /// 1-vCPU 256 MiB phones under the default policy, and not one without overcommit.
    #[test]
    fn default_policy_packs_small_phones_beside_a_big_one() {
        let mut h = HostLoad {
            host_id: "h".into(),
            vcpus: 2,
            memory_mib: 19_000,
            max_phones: 64,
            policy: OvercommitPolicy::default(),
            mem_available_mib: Some(18_000),
            cpu_busy_pct: Some(30),
            used_vcpus: 2,
            used_memory_mib: 1024,
            counted_memory_mib: counted_memory_mib(1024, Some(300)),
            phones: 1,
        };
        let mut placed = 0;
        while h.fits(1, 256) {
            h.used_vcpus += 1;
            h.used_memory_mib += 256;
            h.counted_memory_mib += 256;
            h.phones += 1;
            placed += 1;
        }
        assert_eq!(placed, 8, "vCPUs bound it: 2 cores x 500 % = 10");
        h.policy.vcpu_pct = 100;
        h.used_vcpus = 2;
        assert!(!h.fits(1, 256));
    }

    #[test]
    fn memory_is_counted_by_use_within_the_commit_limit() {
        // 4 GiB host, phones of 1 GiB nominal that each use 100 MiB.
        let mut h = host("m", 0, 0);
        h.memory_mib = 4096;
        h.max_phones = 100;
        h.vcpus = 100;
        h.policy.memory_pct = 200;
        let counted = counted_memory_mib(1024, Some(100));
        assert_eq!(counted, 100 + 128);
        let mut placed = 0;
        while h.fits(1, 1024) {
            h.phones += 1;
            h.used_vcpus += 2;
            h.used_memory_mib += 1024;
            h.counted_memory_mib += counted;
            placed += 1;
        }
        assert_eq!(placed, 8, "the 200 % commit limit binds before use does");
        h.policy.memory_pct = 1000;
        assert!(
            h.fits(1, 1024),
            "by use there is room: 8 x 228 + 1024 <= 4096"
        );
        // Unmeasured phones count in full; measured ones never above nominal.
        assert_eq!(counted_memory_mib(256, None), 256);
        assert_eq!(counted_memory_mib(256, Some(10_000)), 256);
        assert_eq!(counted_memory_mib(256, Some(-5)), 32);
    }

    #[test]
    fn a_host_under_memory_pressure_takes_no_phone() {
        let mut h = host("p", 0, 0);
        h.policy.reserve_mib = 512;
        h.mem_available_mib = Some(700);
        assert!(
            !h.fits(1, 256),
            "700 - 256 leaves less than the 512 MiB reserve"
        );
        h.mem_available_mib = Some(800);
        assert!(h.fits(1, 256));
        assert!(OvercommitPolicy::default().validate().is_ok());
        for bad in [
            OvercommitPolicy {
                vcpu_pct: 0,
                ..Default::default()
            },
            OvercommitPolicy {
                memory_pct: 5000,
                ..Default::default()
            },
            OvercommitPolicy {
                reserve_mib: -1,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_host_busy_above_the_cpu_limit_takes_no_phone_and_busier_hosts_come_last() {
        let mut busy = host("busy", 0, 0);
        busy.policy.cpu_busy_limit_pct = 80;
        busy.cpu_busy_pct = Some(81);
        assert!(!busy.fits(1, 256), "81 % busy is above the 80 % limit");
        busy.cpu_busy_pct = Some(80);
        assert!(busy.fits(1, 256));
        let mut calm = host("calm", 0, 0);
        calm.cpu_busy_pct = Some(5);
        assert_eq!(
            place(&[busy.clone(), calm], 1, 256).unwrap().host_id,
            "calm"
        );
        busy.cpu_busy_pct = Some(100);
        busy.policy.cpu_busy_limit_pct = 100;
        assert!(busy.fits(1, 256), "a 100 % limit never refuses");
        for bad in [0, 9, 101] {
            let p = OvercommitPolicy {
                cpu_busy_limit_pct: bad,
                ..Default::default()
            };
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn minutes_count_only_today() {
        let now = 10 * 86_400_000 + 3_600_000; // 01:00 on day 10
        let yesterday_to_now = (now - 2 * 3_600_000, None);
        let ten_min = (now - 1_200_000, Some(now - 600_000));
        assert_eq!(minutes_used_today(&[yesterday_to_now], now), 60);
        assert_eq!(minutes_used_today(&[ten_min], now), 10);
        assert_eq!(minutes_used_today(&[(now - 1, None)], now), 1);
    }

    #[test]
    fn quota_refuses_at_the_limit() {
        assert_eq!(check_quota(0, 1, 0, 10), Ok(()));
        assert_eq!(
            check_quota(1, 1, 0, 10),
            Err(QuotaRefusal::Phones { limit: 1 })
        );
        assert_eq!(
            check_quota(0, 1, 10, 10),
            Err(QuotaRefusal::Minutes { limit: 10 })
        );
    }
}
