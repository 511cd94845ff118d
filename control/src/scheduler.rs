//! Scheduling decisions as plain functions: no database, no HTTP, easy to test.

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

/// Capacity of a host and what its live phones already use.
#[derive(Debug, Clone, PartialEq)]
pub struct HostLoad {
    pub host_id: String,
    pub vcpus: i64,
    pub memory_mib: i64,
    pub max_phones: i64,
    pub used_vcpus: i64,
    pub used_memory_mib: i64,
    pub phones: i64,
}

/// Picks the host with the most free phone slots (then memory) that fits one more phone of
/// the given size; `None` when no host fits.
pub fn place(hosts: &[HostLoad], vcpus: i64, memory_mib: i64) -> Option<&HostLoad> {
    hosts
        .iter()
        .filter(|h| {
            h.phones < h.max_phones
                && h.used_vcpus + vcpus <= h.vcpus
                && h.used_memory_mib + memory_mib <= h.memory_mib
        })
        .max_by_key(|h| {
            (
                h.max_phones - h.phones,
                h.memory_mib - h.used_memory_mib,
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
            used_vcpus: phones * 2,
            used_memory_mib: mem_used,
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
