//! The one rule every memory of the database keeps: blob links here (`store/link_cache.rs`),
//! manifests and `[[trust]]` verdicts in wharf-registry.
//!
//! - A fill is dropped when the cache was invalidated since its read began (the generation),
//!   so a read that raced a write never lands after the write's invalidation.
//! - On PostgreSQL other replicas write too, and no message reaches this process before they
//!   answer: an entry is a lease of [`LEASE_TRUSTED`] counted from *before* its read, and
//!   whoever removes or changes what a replica may remember waits [`LEASE`] after its commit
//!   before it answers (`MetadataStore::removal_wait`). A replica can only have read the old
//!   state before that commit, so its lease has run out by the time the writer answers.
//! - On SQLite this process is the only writer of what it caches (gc, another process, is
//!   handled by the link cache's epoch file): an entry holds until invalidated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a writer waits after its commit before it answers (PostgreSQL).
pub(crate) const LEASE: Duration = Duration::from_millis(250);
/// How long a replica trusts what it read, from before the read: less than [`LEASE`], a margin
/// for clocks of different machines running at slightly different rates.
pub(crate) const LEASE_TRUSTED: Duration = Duration::from_millis(200);

/// Until when a cache entry may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Until the cache is invalidated (this process is the only writer).
    Invalidated,
    /// Until this instant (a replica's lease, or a cache's own age limit).
    At(Instant),
}

impl Expiry {
    pub fn live_at(self, now: Instant) -> bool {
        match self {
            Expiry::Invalidated => true,
            Expiry::At(until) => now < until,
        }
    }
}

/// Taken before a read of the database that may fill a cache; handed back with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadStart {
    generation: u64,
    began: Instant,
}

impl ReadStart {
    pub fn began(self) -> Instant {
        self.began
    }

    /// The same read, as old as `earlier` when that is older: what a result resting on an
    /// earlier read as well (a verdict taken from another entry) must count its lease from.
    pub fn resting_on(self, earlier: Instant) -> ReadStart {
        ReadStart { began: self.began.min(earlier), ..self }
    }
}

/// A cache's invalidation count and lease. The cache calls [`Freshness::invalidate`] and
/// [`Freshness::admit`] with its own lock held, so that an invalidation and a fill are
/// ordered.
#[derive(Debug)]
pub struct Freshness {
    generation: AtomicU64,
    /// `None`: entries hold until invalidated (SQLite); `Some`: each is a lease (replicas).
    lease: Option<Duration>,
}

impl Freshness {
    pub fn new(lease: Option<Duration>) -> Freshness {
        Freshness { generation: AtomicU64::new(0), lease }
    }

    /// Are entries leases (other replicas write the database too)?
    pub fn leased(&self) -> bool {
        self.lease.is_some()
    }

    /// Call before reading the database for what the cache missed.
    pub fn read_start(&self) -> ReadStart {
        ReadStart { generation: self.generation.load(Ordering::Acquire), began: Instant::now() }
    }

    /// The cache is forgetting entries: every read under way is now stale.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether what was read since `read` may be stored, and until when: `None` when the cache
    /// was invalidated since, or when the read's lease ran out before its answer came.
    pub fn admit(&self, read: ReadStart) -> Option<Expiry> {
        if self.generation.load(Ordering::Acquire) != read.generation {
            return None;
        }
        match self.lease {
            None => Some(Expiry::Invalidated),
            Some(lease) => {
                let until = read.began + lease;
                (Instant::now() < until).then_some(Expiry::At(until))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_admitted() {
        let f = Freshness::new(None);
        let read = f.read_start();
        f.invalidate();
        assert_eq!(f.admit(read), None);
        assert_eq!(f.admit(f.read_start()), Some(Expiry::Invalidated));
        assert!(Expiry::Invalidated.live_at(Instant::now()));
    }

    #[test]
    fn a_lease_counts_from_before_the_read() {
        assert!(LEASE > LEASE_TRUSTED);
        let f = Freshness::new(Some(LEASE_TRUSTED));
        assert!(f.leased() && !Freshness::new(None).leased());
        let read = f.read_start();
        let Some(Expiry::At(until)) = f.admit(read) else { panic!("a fresh read is admitted") };
        assert_eq!(until, read.began() + LEASE_TRUSTED);
        assert!(!Expiry::At(until).live_at(until));
        // A read that began a lease ago is already out of date when its answer comes.
        let old = read.resting_on(Instant::now() - LEASE_TRUSTED);
        assert_eq!(f.admit(old), None);
        assert_eq!(read.resting_on(Instant::now()), read, "a later read does not make it younger");
    }
}
