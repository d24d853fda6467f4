//! Throttling of failed logins, per client address and per user name.
//!
//! Every password check costs a bcrypt computation, so a client that guesses passwords also
//! burns the server's CPU. Each client address (IPv6: its /64) and each user name has a
//! count of recent failures: the first few are free, after that one attempt is admitted per
//! back-off period (doubling with each failure, capped), and every other attempt is refused
//! before any bcrypt runs, with the time to wait. A success clears both counts; a quiet
//! period forgets them. Attempts still running count as failures until they finish, so a
//! burst of parallel guesses from one client gets no more than the free allowance.
//!
//! User names are tracked whether or not they exist (otherwise a refusal would tell that a
//! name is real), keyed by a hash with a per-process random key: the maps hold no names and
//! stay bounded (the entry that failed longest ago is dropped when one is full).
//!
//! The per-user count lets anyone delay a user's password logins by failing on purpose;
//! that is the price of stopping guesses spread over many addresses. Tokens already issued
//! keep working.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How failed logins are throttled.
#[derive(Debug, Clone)]
pub struct LoginLimits {
    /// Failures from one client address before attempts are spaced out.
    pub free_per_client: u32,
    /// Failures for one user name before attempts are spaced out (higher: a user name is
    /// shared by everyone who tries it, the real user included).
    pub free_per_user: u32,
    /// The first back-off; it doubles with each further failure.
    pub backoff: Duration,
    /// The longest back-off.
    pub max_backoff: Duration,
    /// Failures are forgotten after this long without one.
    pub forget_after: Duration,
    /// Entries kept per map (clients, users).
    pub max_entries: usize,
    /// Password checks (bcrypt) running at the same time; more wait for a turn.
    pub concurrent_checks: usize,
    /// How long a password check waits for a turn before the client is told to retry.
    pub check_wait: Duration,
    /// Proxies in front (nginx, a balancer) whose `X-Forwarded-For` names the client; from
    /// anyone else that header is ignored (a client would pick its own address).
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for LoginLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        LoginLimits {
            free_per_client: 5,
            free_per_user: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            forget_after: Duration::from_secs(900),
            max_entries: 8192,
            // At most half the cores hash passwords: the rest serve requests.
            concurrent_checks: (cores / 2).max(1),
            check_wait: Duration::from_secs(2),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Why an attempt was refused before its password was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// Too many recent failures from this client address.
    Client { retry_after: Duration },
    /// Too many recent failures for this user name.
    User { retry_after: Duration },
}

impl Throttled {
    pub fn retry_after(&self) -> Duration {
        match self {
            Throttled::Client { retry_after } | Throttled::User { retry_after } => *retry_after,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    /// Admitted attempts not finished yet.
    pending: u32,
    last: Instant,
}

/// Failure counts by key, bounded.
#[derive(Debug)]
struct Tracker<K> {
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Copy> Tracker<K> {
    fn new() -> Self {
        Tracker { entries: HashMap::new() }
    }

    /// How long until `key` may try again (`None`: now), counting pending attempts.
    fn wait(&mut self, key: &K, free: u32, limits: &LoginLimits, now: Instant) -> Option<Duration> {
        let e = self.entries.get(key)?;
        if now.duration_since(e.last) >= limits.forget_after && e.pending == 0 {
            self.entries.remove(key);
            return None;
        }
        let counted = e.failures + e.pending;
        if counted < free {
            return None;
        }
        if e.pending > 0 {
            // One attempt at a time once past the allowance: wait for it to finish.
            return Some(limits.backoff);
        }
        let backoff = backoff(counted + 1 - free, limits);
        let since = now.duration_since(e.last);
        (since < backoff).then(|| backoff - since)
    }

    fn begin(&mut self, key: K, limits: &LoginLimits, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= limits.max_entries {
            self.evict(limits, now);
        }
        let e = self.entries.entry(key).or_insert(Entry { failures: 0, pending: 0, last: now });
        e.pending += 1;
    }

    /// An attempt ended: a failure counts; a success clears the count if `clear`.
    fn finish(&mut self, key: &K, failed: bool, clear: bool, now: Instant) {
        let Some(e) = self.entries.get_mut(key) else { return };
        e.pending = e.pending.saturating_sub(1);
        if failed {
            e.failures = e.failures.saturating_add(1);
            e.last = now;
        } else if clear {
            self.entries.remove(key);
        }
    }

    /// Forget what is old; if still full, the entry that failed longest ago.
    fn evict(&mut self, limits: &LoginLimits, now: Instant) {
        self.entries.retain(|_, e| e.pending > 0 || now.duration_since(e.last) < limits.forget_after);
        if self.entries.len() >= limits.max_entries
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
    }
}

/// The `n`-th back-off (from 1): `backoff * 2^(n-1)`, at most `max_backoff`.
fn backoff(n: u32, limits: &LoginLimits) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    limits.backoff.saturating_mul(factor).min(limits.max_backoff)
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber's network).
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => u128::from(v6) & !((1u128 << 64) - 1),
        },
    }
}

/// The client a request counts for: the TCP peer, unless the peer is a trusted proxy; then
/// the right-most address of `X-Forwarded-For` (each value, comma-separated) that is not a
/// trusted proxy itself. Entries a proxy did not write (left of the last trusted hop) are
/// never used.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    limits: &LoginLimits,
) -> IpAddr {
    if !limits.trusted_proxies.contains(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if limits.trusted_proxies.contains(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage where an address should be: stop at the last hop we can trust.
            Err(_) => break,
        }
    }
    peer
}

/// Failed logins per client and per user name.
#[derive(Debug)]
pub struct LoginThrottle {
    limits: LoginLimits,
    hasher: RandomState,
    clients: Mutex<Tracker<u128>>,
    users: Mutex<Tracker<u64>>,
}

impl LoginThrottle {
    pub fn new(limits: LoginLimits) -> LoginThrottle {
        LoginThrottle {
            limits,
            hasher: RandomState::new(),
            clients: Mutex::new(Tracker::new()),
            users: Mutex::new(Tracker::new()),
        }
    }

    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    /// Admit an attempt of `user` from `client`, or say how long to wait.
    pub fn begin(&self, client: IpAddr, user: &str) -> Result<AttemptGuard<'_>, Throttled> {
        self.begin_at(client, user, Instant::now())
    }

    fn begin_at(&self, client: IpAddr, user: &str, now: Instant) -> Result<AttemptGuard<'_>, Throttled> {
        let c = client_key(client);
        let u = self.hasher.hash_one(user);
        let l = &self.limits;
        // Lock order: clients, then users.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(retry_after) = clients.wait(&c, l.free_per_client, l, now) {
            return Err(Throttled::Client { retry_after });
        }
        if let Some(retry_after) = users.wait(&u, l.free_per_user, l, now) {
            return Err(Throttled::User { retry_after });
        }
        clients.begin(c, l, now);
        users.begin(u, l, now);
        Ok(AttemptGuard { throttle: self, client: c, user: u, done: false })
    }

    fn finish_at(&self, client: u128, user: u64, failed: bool, now: Instant) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        // A success clears the user's failures (the real user is back), not the client's:
        // logging in to one's own account between guesses must not reset the count.
        clients.finish(&client, failed, false, now);
        users.finish(&user, failed, true, now);
    }

    /// Release a pending attempt without an outcome.
    fn abandon(&self, client: u128, user: u64) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = clients.entries.get_mut(&client) {
            e.pending = e.pending.saturating_sub(1);
        }
        if let Some(e) = users.entries.get_mut(&user) {
            e.pending = e.pending.saturating_sub(1);
        }
    }
}

/// An admitted attempt: report its outcome with [`AttemptGuard::finish`]. Dropped without
/// one (the request went away), it counts as neither failure nor success.
#[derive(Debug)]
pub struct AttemptGuard<'a> {
    throttle: &'a LoginThrottle,
    client: u128,
    user: u64,
    done: bool,
}

impl AttemptGuard<'_> {
    /// The password was right (`true`) or wrong.
    pub fn finish(mut self, success: bool) {
        self.done = true;
        self.throttle.finish_at(self.client, self.user, !success, Instant::now());
    }
}

impl Drop for AttemptGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.throttle.abandon(self.client, self.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            free_per_client: 3,
            free_per_user: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(8),
            forget_after: Duration::from_secs(60),
            max_entries: 4,
            ..LoginLimits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Begin and fail one attempt at `now`.
    fn fail(t: &LoginThrottle, client: &str, user: &str, now: Instant) -> Result<(), Throttled> {
        let a = t.begin_at(ip(client), user, now)?;
        let (c, u) = (a.client, a.user);
        std::mem::forget(a);
        t.finish_at(c, u, true, now);
        Ok(())
    }

    #[test]
    fn repeated_failures_from_one_client_back_off_exponentially() {
        let t = LoginThrottle::new(limits());
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(fail(&t, "192.0.2.1", &format!("user{i}"), t0), Ok(()), "free attempt {i}");
        }
        // The 4th waits 1 s after the last failure, the 5th 2 s, then 4 s, 8 s, 8 s (cap).
        let mut now = t0;
        for wait in [1, 2, 4, 8, 8] {
            let err = fail(&t, "192.0.2.1", "someone", now).unwrap_err();
            assert_eq!(err, Throttled::Client { retry_after: Duration::from_secs(wait) });
            let almost = now + Duration::from_secs(wait) - Duration::from_millis(1);
            assert!(fail(&t, "192.0.2.1", "someone", almost).is_err());
            now += Duration::from_secs(wait);
            assert_eq!(fail(&t, "192.0.2.1", "someone", now), Ok(()));
        }
        // Another client is not affected; a quiet minute forgets the first.
        assert_eq!(fail(&t, "192.0.2.2", "other", now), Ok(()));
        assert!(t.begin_at(ip("192.0.2.1"), "x", now + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn forty_wrong_passwords_are_not_all_checked() {
        let t = LoginThrottle::new(limits());
        let now = Instant::now();
        let checked = (0..40).filter(|_| fail(&t, "192.0.2.1", "ci", now).is_ok()).count();
        assert_eq!(checked, 3);
    }

    #[test]
    fn a_user_name_is_throttled_across_clients_and_cleared_by_a_success() {
        let t = LoginThrottle::new(LoginLimits { max_entries: 100, ..limits() });
        let now = Instant::now();
        for i in 0..5 {
            assert_eq!(fail(&t, &format!("198.51.100.{i}"), "admin", now), Ok(()));
        }
        let err = fail(&t, "198.51.100.99", "admin", now).unwrap_err();
        assert_eq!(err, Throttled::User { retry_after: Duration::from_secs(1) });
        // Unknown and known names are treated alike: the throttle does not know which is which.
        assert_eq!(fail(&t, "198.51.100.99", "nobody", now), Ok(()));
        let later = now + Duration::from_secs(1);
        t.begin_at(ip("198.51.100.100"), "admin", later).unwrap().finish(true);
        assert!(t.begin_at(ip("198.51.100.101"), "admin", later).is_ok());
    }

    #[test]
    fn a_success_does_not_reset_the_client() {
        let t = LoginThrottle::new(limits());
        let now = Instant::now();
        for _ in 0..3 {
            fail(&t, "192.0.2.1", "victim", now).unwrap();
        }
        // Logging in to one's own account in between leaves the guesses counted.
        let later = now + Duration::from_secs(1);
        t.begin_at(ip("192.0.2.1"), "mine", later).unwrap().finish(true);
        assert!(fail(&t, "192.0.2.1", "victim", later).is_ok());
        assert!(fail(&t, "192.0.2.1", "victim", later).is_err());
    }

    #[test]
    fn parallel_attempts_count_before_they_finish() {
        let t = LoginThrottle::new(limits());
        let now = Instant::now();
        let running: Vec<_> = (0..3).map(|_| t.begin_at(ip("192.0.2.7"), "ci", now).unwrap()).collect();
        assert!(t.begin_at(ip("192.0.2.7"), "ci", now).is_err(), "a burst gets the allowance only");
        // Abandoned attempts (the request went away) count as nothing.
        drop(running);
        assert!(t.begin_at(ip("192.0.2.7"), "ci", now).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let t = LoginThrottle::new(limits());
        let now = Instant::now();
        for i in 1..=3 {
            fail(&t, &format!("2001:db8:1:2::{i}"), "ci", now).unwrap();
        }
        assert!(fail(&t, "2001:db8:1:2:ffff::9", "ci", now).is_err());
        assert!(fail(&t, "2001:db8:1:3::1", "ci", now).is_ok());
        // IPv4-mapped is the IPv4 address.
        for _ in 0..3 {
            fail(&t, "192.0.2.9", "x", now).unwrap();
        }
        assert!(fail(&t, "::ffff:192.0.2.9", "x", now).is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let proxy = ip("10.0.0.5");
        let limits = LoginLimits { trusted_proxies: vec![proxy, ip("10.0.0.6")], ..limits() };
        let xff = |v: &'static [&'static str]| v.iter().copied();
        // Behind the proxy: the right-most hop it did not write itself.
        assert_eq!(client_address(proxy, xff(&["192.0.2.1"]), &limits), ip("192.0.2.1"));
        assert_eq!(client_address(proxy, xff(&["6.6.6.6, 192.0.2.1"]), &limits), ip("192.0.2.1"));
        assert_eq!(client_address(proxy, xff(&["6.6.6.6", "192.0.2.1, 10.0.0.6"]), &limits), ip("192.0.2.1"));
        // Nothing usable: the proxy itself.
        assert_eq!(client_address(proxy, xff(&[]), &limits), proxy);
        assert_eq!(client_address(proxy, xff(&["nonsense"]), &limits), proxy);
        // Anyone else chooses nothing with the header.
        let client = ip("192.0.2.9");
        assert_eq!(client_address(client, xff(&["1.2.3.4"]), &limits), client);
        assert_eq!(client_address(proxy, xff(&["1.2.3.4"]), &LoginLimits::default()), proxy);
    }

    #[test]
    fn maps_stay_bounded() {
        let t = LoginThrottle::new(limits());
        let mut now = Instant::now();
        for i in 0..50u8 {
            now += Duration::from_millis(10);
            fail(&t, &format!("203.0.113.{i}"), &format!("u{i}"), now).unwrap();
        }
        assert!(t.clients.lock().unwrap().entries.len() <= 4);
        assert!(t.users.lock().unwrap().entries.len() <= 4);
    }
}
