//! Login throttling: per user name and per client IP, failed logins past a limit lock that
//! key with exponential backoff (1 s, doubling, capped at 15 min). Attempts still hashing
//! count against the limit, so a concurrent burst gets no more tries than a sequential one.
//! State is per process (each replica throttles on its own): the limits bound guessing per
//! replica, and the bounded hash pool bounds what any burst costs.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Failed logins per user name before backoff starts.
pub const USER_LIMIT: u32 = 5;
/// Failed logins per client IP before backoff starts.
pub const IP_LIMIT: u32 = 20;
/// First backoff delay; each further failure doubles it.
const BASE_MS: i64 = 1_000;
/// Longest backoff delay.
pub const CAP_MS: i64 = 15 * 60 * 1_000;
/// A key silent this long starts over (and may be pruned).
const FORGET_MS: i64 = 2 * CAP_MS;
/// Most keys tracked per table; beyond it (after pruning) new keys are refused, failing
/// closed rather than growing memory without bound.
const MAX_KEYS: usize = 100_000;

#[derive(Default, Clone, Copy)]
struct Entry {
    failures: u32,
    in_flight: u32,
    last_failure_ms: i64,
}

impl Entry {
    /// Seconds until this key may try again, or `None` if it may now.
    fn wait_s(&self, limit: u32, now: i64) -> Option<u64> {
        if self.failures + self.in_flight < limit {
            return None;
        }
        if self.failures >= limit {
            let shift = (self.failures - limit).min(20);
            let until = self.last_failure_ms + (BASE_MS << shift).min(CAP_MS);
            if now < until {
                return Some(((until - now + 999) / 1000) as u64);
            }
        }
        (self.in_flight > 0).then_some(1)
    }
}

struct Table<K> {
    limit: u32,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(limit: u32) -> Self {
        Self {
            limit,
            entries: HashMap::new(),
        }
    }

    /// Forgets `key`'s past if it has been silent long enough.
    fn fresh(&mut self, key: &K, now: i64) {
        if let Some(e) = self.entries.get(key) {
            if e.in_flight == 0 && now - e.last_failure_ms > FORGET_MS {
                self.entries.remove(key);
            }
        }
    }

    fn wait_s(&self, key: &K, now: i64) -> Option<u64> {
        self.entries.get(key)?.wait_s(self.limit, now)
    }

    /// Room for `key`: prunes stale keys when full; false if still full.
    fn has_room(&mut self, key: &K, now: i64) -> bool {
        if self.entries.len() < MAX_KEYS || self.entries.contains_key(key) {
            return true;
        }
        self.entries
            .retain(|_, e| e.in_flight > 0 || now - e.last_failure_ms <= FORGET_MS);
        self.entries.len() < MAX_KEYS
    }

    fn entry(&mut self, key: &K) -> &mut Entry {
        self.entries.entry(key.clone()).or_default()
    }
}

struct Tables {
    users: Table<String>,
    ips: Table<IpAddr>,
}

/// The login throttle of one process.
#[derive(Clone)]
pub struct LoginThrottle {
    tables: Arc<Mutex<Tables>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            tables: Arc::new(Mutex::new(Tables {
                users: Table::new(USER_LIMIT),
                ips: Table::new(IP_LIMIT),
            })),
        }
    }
}

impl LoginThrottle {
    /// Starts a login attempt for `user` from `ip`, or `Throttled` with the delay to wait.
    /// The returned attempt must be resolved with [`Attempt::failed`] or
    /// [`Attempt::succeeded`]; dropped unresolved (an error on the way) it counts as neither.
    pub fn begin(&self, user: &str, ip: IpAddr) -> Result<Attempt> {
        let now = crate::now_ms();
        let user = user.to_owned();
        let mut t = self.tables.lock().expect("login throttle lock");
        t.users.fresh(&user, now);
        t.ips.fresh(&ip, now);
        let wait = t.users.wait_s(&user, now).max(t.ips.wait_s(&ip, now));
        let full = !t.users.has_room(&user, now) || !t.ips.has_room(&ip, now);
        if let Some(retry_after_s) = wait.or(full.then_some(1)) {
            return Err(Error::Throttled {
                what: "too many failed logins for this user or address".into(),
                retry_after_s,
            });
        }
        t.users.entry(&user).in_flight += 1;
        t.ips.entry(&ip).in_flight += 1;
        Ok(Attempt {
            throttle: self.clone(),
            user,
            ip,
            resolved: false,
        })
    }
}

/// A login attempt in progress (holds its place against the limits).
pub struct Attempt {
    throttle: LoginThrottle,
    user: String,
    ip: IpAddr,
    resolved: bool,
}

impl Attempt {
    /// Ends the attempt's hold on the user's and the IP's entries and applies `f` to each
    /// (`true` for the user's).
    fn settle(&mut self, f: impl Fn(&mut Entry, bool)) {
        self.resolved = true;
        let mut t = self.throttle.tables.lock().expect("login throttle lock");
        let t = &mut *t;
        for (e, is_user) in [
            (t.users.entry(&self.user), true),
            (t.ips.entry(&self.ip), false),
        ] {
            e.in_flight = e.in_flight.saturating_sub(1);
            f(e, is_user);
        }
    }

    /// A wrong password: one more failure for the user and the IP.
    pub fn failed(mut self) {
        let now = crate::now_ms();
        self.settle(|e, _| {
            e.failures += 1;
            e.last_failure_ms = now;
        });
    }

    /// The right password: the user's failures are forgotten (the IP's stay: one valid
    /// account must not reset an address that is guessing others).
    pub fn succeeded(mut self) {
        self.settle(|e, is_user| {
            if is_user {
                e.failures = 0;
            }
        });
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.resolved {
            self.settle(|_, _| {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_then_doubling_backoff() {
        let th = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..USER_LIMIT {
            th.begin("alice", ip).unwrap().failed();
        }
        let Err(Error::Throttled { retry_after_s, .. }) = th.begin("alice", ip) else {
            panic!("sixth attempt allowed");
        };
        assert_eq!(retry_after_s, 1);
        assert!(th.begin("bob", ip).is_ok(), "other users are not locked");
        // Backdate the last failure: the lock lifts, one attempt passes, and its failure
        // doubles the delay.
        th.tables
            .lock()
            .unwrap()
            .users
            .entry(&"alice".into())
            .last_failure_ms -= 1_000;
        th.begin("alice", ip).unwrap().failed();
        let Err(Error::Throttled { retry_after_s, .. }) = th.begin("alice", ip) else {
            panic!("attempt allowed inside the backoff");
        };
        assert_eq!(retry_after_s, 2);
    }

    #[test]
    fn in_flight_attempts_count_and_dropped_ones_release() {
        let th = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..USER_LIMIT)
            .map(|_| th.begin("carol", ip).unwrap())
            .collect();
        assert!(
            th.begin("carol", ip).is_err(),
            "a burst gets no extra tries"
        );
        drop(held);
        assert!(
            th.begin("carol", ip).is_ok(),
            "unresolved attempts are not failures"
        );
    }

    #[test]
    fn per_ip_limit_spans_users() {
        let th = LoginThrottle::default();
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        for n in 0..IP_LIMIT {
            th.begin(&format!("user{n}"), ip).unwrap().failed();
        }
        assert!(th.begin("someone-else", ip).is_err());
        assert!(th
            .begin("someone-else", "192.0.2.4".parse().unwrap())
            .is_ok());
    }
}
