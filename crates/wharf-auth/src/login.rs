//! Password logins as the server runs them: the throttle first, then the cache of recent
//! successes, then bcrypt on the blocking pool, at most [`LoginLimits::concurrent_checks`]
//! at a time, so that a flood of logins never holds up other requests.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::throttle::{LoginLimits, Throttled};
use crate::{Authority, Identity};

/// Why a password login did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("invalid user name or password")]
    Invalid,
    #[error("too many failed logins from this address: retry in {} s", .0.retry_after().as_secs().max(1))]
    Throttled(Throttled),
    #[error("too many logins in progress: retry in a moment")]
    Busy,
    /// The LDAP directory could not say (down, slow, misconfigured): not the client's failure.
    #[error("{0}")]
    Directory(String),
}

impl LoginError {
    /// How long the client should wait before trying again, if it should.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LoginError::Invalid => None,
            LoginError::Throttled(t) => Some(t.retry_after()),
            LoginError::Busy => Some(Duration::from_secs(1)),
            LoginError::Directory(_) => Some(Duration::from_secs(5)),
        }
    }
}

/// Counters of password logins (for `/metrics`: counts only, never a name).
#[derive(Debug, Default)]
pub struct LoginStats {
    /// Wrong user name or password (after a bcrypt check).
    pub failed: AtomicU64,
    /// Refused by the throttle, per client address and per user name.
    pub throttled_client: AtomicU64,
    pub throttled_user: AtomicU64,
    /// Refused because the password checks were all busy for too long.
    pub busy: AtomicU64,
    /// bcrypt checks running now, and the most ever running at once.
    pub running: AtomicUsize,
    pub peak: AtomicUsize,
}

impl Authority {
    /// Throttle, semaphore and counters with other limits than the defaults.
    pub fn with_login_limits(mut self, limits: LoginLimits) -> Authority {
        self.checks = tokio::sync::Semaphore::new(limits.concurrent_checks.max(1));
        self.throttle = crate::throttle::LoginThrottle::new(limits);
        self
    }

    pub fn login_limits(&self) -> &LoginLimits {
        self.throttle.limits()
    }

    pub fn login_stats(&self) -> &LoginStats {
        &self.stats
    }

    /// Check `user`'s password for a request from `client`. The internal login is answered
    /// first (its password is 256 random bits: guessing it needs no throttle); everyone
    /// else goes through the throttle before anything is compared, recent successes
    /// included (otherwise a cache hit during a lock-out would tell a right guess).
    pub async fn password_login(
        self: &Arc<Self>,
        client: IpAddr,
        user: String,
        password: String,
    ) -> Result<Identity, LoginError> {
        if self.is_internal(&user, &password) {
            return Ok(Identity::Internal);
        }
        let attempt = match self.throttle.begin(client, &user) {
            Ok(a) => a,
            Err(t) => {
                let counter = match t {
                    Throttled::Client { .. } => &self.stats.throttled_client,
                    Throttled::User { .. } => &self.stats.throttled_user,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return Err(LoginError::Throttled(t));
            }
        };
        if let Some(id) = self.cached_login(&user, &password) {
            attempt.finish(true);
            return Ok(id);
        }
        // Directory users: the bind is the directory's work, bounded by its timeout, so the
        // cap on bcrypt checks does not apply; the throttle does.
        if let Some(directory) = self.directory_for(&user) {
            return match directory.login(&user, &password).await {
                Ok(Some(found)) => {
                    let id = Identity::Member { user: user.clone(), groups: found.groups };
                    self.cache.put(&user, &password, &id);
                    attempt.finish(true);
                    Ok(id)
                }
                Ok(None) => {
                    attempt.finish(false);
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    Err(LoginError::Invalid)
                }
                // Dropping the attempt leaves the counts as they were: nothing was checked.
                Err(e) => Err(LoginError::Directory(e.to_string())),
            };
        }
        let wait = self.throttle.limits().check_wait;
        let permit = match tokio::time::timeout(wait, self.checks.acquire()).await {
            Ok(Ok(p)) => p,
            // Dropping the attempt leaves the counts as they were: nothing was checked.
            _ => {
                self.stats.busy.fetch_add(1, Ordering::Relaxed);
                return Err(LoginError::Busy);
            }
        };
        let me = self.clone();
        let id = tokio::task::spawn_blocking(move || {
            let now = me.stats.running.fetch_add(1, Ordering::Relaxed) + 1;
            me.stats.peak.fetch_max(now, Ordering::Relaxed);
            let id = me.login(&user, &password);
            me.stats.running.fetch_sub(1, Ordering::Relaxed);
            id
        })
        .await
        .ok()
        .flatten();
        drop(permit);
        attempt.finish(id.is_some());
        match id {
            Some(id) => Ok(id),
            None => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                Err(LoginError::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AuthConfig, Htpasswd};

    fn authority(limits: LoginLimits) -> Arc<Authority> {
        let text = Htpasswd::hash_line("ci", "pw", 4).unwrap();
        let config = AuthConfig { htpasswd: Some(Htpasswd::parse(&text).unwrap()), ..AuthConfig::default() };
        Arc::new(Authority::new(config).with_login_limits(limits))
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[tokio::test]
    async fn wrong_passwords_are_throttled_before_bcrypt() {
        let a = authority(LoginLimits { free_per_client: 3, ..LoginLimits::default() });
        let mut outcomes = Vec::new();
        for _ in 0..40 {
            outcomes.push(a.password_login(CLIENT, "ci".into(), "wrong".into()).await);
        }
        assert!(outcomes[..3].iter().all(|o| *o == Err(LoginError::Invalid)), "{outcomes:?}");
        assert!(outcomes[3..].iter().all(|o| matches!(o, Err(LoginError::Throttled(_)))), "{outcomes:?}");
        assert_eq!(a.stats.failed.load(Ordering::Relaxed), 3, "only 3 bcrypt checks ran");
        assert_eq!(a.stats.throttled_client.load(Ordering::Relaxed), 37);
        // The right password is refused too while throttled (no oracle), another client is not.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));
        assert!(a.password_login(CLIENT, "ci".into(), "pw".into()).await.is_err());
        assert_eq!(a.password_login(other, "ci".into(), "pw".into()).await, Ok(Identity::User("ci".into())));
        let e = a.password_login(CLIENT, "ci".into(), "pw".into()).await.unwrap_err();
        assert!(e.retry_after().is_some_and(|d| d >= Duration::from_millis(1)));
    }

    #[tokio::test]
    async fn the_internal_login_is_not_throttled() {
        let mut inner = Authority::new(AuthConfig::default()).with_login_limits(LoginLimits {
            free_per_client: 1,
            free_per_user: 1,
            ..LoginLimits::default()
        });
        let (user, password) = inner.internal_credentials();
        let a = Arc::new(inner);
        for _ in 0..3 {
            let _ = a.password_login(CLIENT, user.clone(), "guess".into()).await;
        }
        assert_eq!(a.password_login(CLIENT, user, password).await, Ok(Identity::Internal));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_checks_are_capped() {
        let limits = LoginLimits {
            free_per_client: 1000,
            free_per_user: 1000,
            concurrent_checks: 1,
            ..LoginLimits::default()
        };
        let a = authority(limits);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let a = a.clone();
                tokio::spawn(async move { a.password_login(CLIENT, "ci".into(), format!("wrong{i}")).await })
            })
            .collect();
        for t in tasks {
            let outcome = t.await.unwrap();
            assert!(matches!(outcome, Err(LoginError::Invalid | LoginError::Busy)), "{outcome:?}");
        }
        assert_eq!(a.stats.peak.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.running.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_login_waits_briefly_for_a_turn_then_gives_up() {
        let limits = LoginLimits {
            concurrent_checks: 1,
            check_wait: Duration::from_millis(20),
            ..LoginLimits::default()
        };
        let a = authority(limits);
        let held = a.checks.acquire().await.unwrap();
        assert_eq!(a.password_login(CLIENT, "ci".into(), "pw".into()).await, Err(LoginError::Busy));
        assert_eq!(a.stats.busy.load(Ordering::Relaxed), 1);
        drop(held);
        // Giving up counted as no failure.
        assert_eq!(a.password_login(CLIENT, "ci".into(), "pw".into()).await, Ok(Identity::User("ci".into())));
    }
}
