//! Which blobs are linked to which repository, remembered for the blob pull hot path (every
//! `GET` and `HEAD /v2/<name>/blobs/<digest>` asks). On SQLite each query is a round trip to a
//! connection's worker thread, two context switches that cost more than serving a small blob
//! from memory; on PostgreSQL it is a round trip to the server, which caps a replica at a
//! fraction of what it serves from memory. This cache answers instead.
//!
//! Only links that exist are kept (a link that appears is simply read next time); what removes
//! one must say so, after its commit, with [`LinkCache::unlinked`]. Then, by backend:
//!
//! - SQLite, in this process: every remembered link is forgotten at once.
//! - SQLite, another process (`wharf gc` against a served data directory): the same call grows
//!   the *epoch file* beside the database (`<db>-link-epoch`), whose size and time every lookup
//!   compares with what it saw when it filled: a request that starts after `wharf gc` is done
//!   never sees a link it removed. Entries also expire after [`MAX_AGE`], which bounds the
//!   damage if the epoch file cannot be written.
//! - PostgreSQL (replicas, which cannot see each other's memory): a remembered link is a lease
//!   ([`crate::freshness`]), and whoever removes a link waits after its commit before it
//!   answers ([`LinkCache::unlinked_and_expired`]): a request sent after the `DELETE` (or gc)
//!   returns sees the removal on every replica. The price is a quarter of a second on each
//!   blob `DELETE` and on each gc commit that removed links; under load a replica still asks
//!   the database about a hot link only five times a second.
//!
//! A fill is dropped when anything was unlinked in this process since its read began
//! ([`Freshness`]), so a stale read never lands after an invalidation.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use wharf_oci::{Digest, RepoName};

use crate::freshness::{Expiry, Freshness, LEASE, LEASE_TRUSTED, ReadStart};

/// How long a remembered link is trusted without a word from its epoch file (SQLite).
const MAX_AGE: Duration = Duration::from_secs(30);
/// Links remembered; past this the cache starts over (a lookup then queries again).
const MAX_ENTRIES: usize = 16_384;
/// The epoch file is emptied once this long, so it never grows without bound (emptying it
/// changes its size and time, which is all a reader compares).
const EPOCH_FILE_MAX: u64 = 4096;

/// What a reader compares: the epoch file's length, modification time and inode.
type Epoch = Option<(u64, SystemTime, u64)>;

#[derive(Default)]
struct Entries {
    /// Size, and until when the entry is trusted.
    links: HashMap<RepoName, HashMap<Digest, (u64, Expiry)>>,
    count: usize,
    /// The epoch file as it was when these entries were filled.
    epoch: Epoch,
}

pub(crate) struct LinkCache {
    entries: Mutex<Entries>,
    /// Invalidations, and on PostgreSQL the lease (see the module docs).
    freshness: Freshness,
    /// `None` for an in-memory database, which no other process can open, and for PostgreSQL.
    epoch_file: Option<PathBuf>,
}

/// A lookup that found nothing: what [`LinkCache::fill`] needs once the database answered.
pub(crate) type Miss = ReadStart;

impl LinkCache {
    /// The cache of the SQLite database at `db_path` (`None`: in memory).
    pub(crate) fn new(db_path: Option<&Path>) -> LinkCache {
        let epoch_file = db_path.map(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push("-link-epoch");
            PathBuf::from(name)
        });
        let cache = LinkCache { entries: Mutex::default(), freshness: Freshness::new(None), epoch_file };
        cache.entries().epoch = cache.read_epoch();
        cache
    }

    /// The cache of a PostgreSQL database, which other replicas change too.
    pub(crate) fn for_replicas() -> LinkCache {
        LinkCache {
            entries: Mutex::default(),
            freshness: Freshness::new(Some(LEASE_TRUSTED)),
            epoch_file: None,
        }
    }

    /// How long whoever removed a link must wait after the commit before it reports the
    /// removal done: until no replica still trusts the link.
    pub(crate) fn removal_wait(&self) -> Duration {
        if self.freshness.leased() { LEASE } else { Duration::ZERO }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_epoch(&self) -> Epoch {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(self.epoch_file.as_ref()?).ok()?;
        Some((meta.len(), meta.modified().ok()?, meta.ino()))
    }

    /// Drops every entry if another process unlinked something since they were filled.
    fn check_epoch(&self, entries: &mut Entries) {
        if self.epoch_file.is_none() {
            return;
        }
        let now = self.read_epoch();
        if now != entries.epoch {
            self.freshness.invalidate();
            entries.links.clear();
            entries.count = 0;
            entries.epoch = now;
        }
    }

    /// `Ok(size)` if `digest` is remembered as linked to `repo`; else a [`Miss`], to read the
    /// link from the database (right away) and pass to [`LinkCache::fill`]. One lock, and on
    /// SQLite one `stat`.
    pub(crate) fn lookup(&self, repo: &RepoName, digest: &Digest) -> Result<u64, Miss> {
        let mut entries = self.entries();
        self.check_epoch(&mut entries);
        match entries.links.get(repo).and_then(|m| m.get(digest)) {
            Some(&(size, until)) if until.live_at(Instant::now()) => Ok(size),
            _ => Err(self.freshness.read_start()),
        }
    }

    /// Remembers a link read from the database, unless something was unlinked here since the
    /// read began.
    pub(crate) fn fill(&self, miss: Miss, repo: &RepoName, digest: &Digest, size: u64) {
        let mut entries = self.entries();
        self.check_epoch(&mut entries);
        let until = match self.freshness.admit(miss) {
            None => return,
            // Bounded even here, in case the epoch file cannot be written.
            Some(Expiry::Invalidated) => Expiry::At(Instant::now() + MAX_AGE),
            Some(lease) => lease,
        };
        if entries.count >= MAX_ENTRIES {
            entries.links.clear();
            entries.count = 0;
        }
        let fresh =
            entries.links.entry(repo.clone()).or_default().insert(digest.clone(), (size, until)).is_none();
        entries.count += usize::from(fresh);
    }

    /// Links were removed (committed): forget every remembered link here, and tell other
    /// processes by changing the epoch file.
    pub(crate) fn unlinked(&self) {
        {
            let mut entries = self.entries();
            self.freshness.invalidate();
            entries.links.clear();
            entries.count = 0;
        }
        if let Some(path) = &self.epoch_file
            && let Err(e) = bump_epoch_file(path)
        {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not update the link epoch file: a registry serving this database may \
                 report removed blob links for up to {} s",
                MAX_AGE.as_secs()
            );
        }
    }

    /// What a remover of links calls after its commit, before it reports the removal done:
    /// [`LinkCache::unlinked`], then the [`LinkCache::removal_wait`] that no replica's trust in
    /// the removed links outlasts.
    pub(crate) async fn unlinked_and_expired(&self) {
        self.unlinked();
        tokio::time::sleep(self.removal_wait()).await;
    }
}

/// Grows the epoch file by a byte (or empties it once it is long): either changes its size.
fn bump_epoch_file(path: &Path) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    if file.metadata()?.len() >= EPOCH_FILE_MAX {
        file.set_len(0)?;
    } else {
        file.write_all(b".")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a reader that missed `digest` would pass to `fill`.
    fn gen_of(cache: &LinkCache, repo: &RepoName, digest: &Digest) -> Miss {
        cache.lookup(repo, digest).unwrap_err()
    }

    fn key(n: u8) -> (RepoName, Digest) {
        ("team/app".parse().unwrap(), Digest::sha256_of(&[n]))
    }

    #[test]
    fn a_link_removed_in_this_process_is_forgotten_and_a_stale_fill_dropped() {
        let cache = LinkCache::new(None);
        let (repo, d) = key(1);
        let g = cache.lookup(&repo, &d).unwrap_err();
        cache.fill(g, &repo, &d, 7);
        assert_eq!(cache.lookup(&repo, &d), Ok(7));
        assert!(cache.lookup(&"other".parse().unwrap(), &d).is_err(), "only in its repository");

        cache.unlinked(); // a delete commits while a reader is at the database
        assert!(cache.lookup(&repo, &d).is_err());
        cache.fill(g, &repo, &d, 7);
        assert!(cache.lookup(&repo, &d).is_err(), "a read from before the unlink must not land");
    }

    #[test]
    fn a_link_removed_by_another_process_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("metadata.db");
        let server = LinkCache::new(Some(&db));
        let gc = LinkCache::new(Some(&db)); // `wharf gc`, another process on the same file
        let (repo, d) = key(2);
        server.fill(gen_of(&server, &repo, &d), &repo, &d, 9);
        assert_eq!(server.lookup(&repo, &d).ok(), Some(9));

        // A reader of another link is at the database when gc commits.
        let before = gen_of(&server, &repo, &key(3).1);
        gc.unlinked();
        assert_eq!(server.lookup(&repo, &d).ok(), None, "the epoch file changed");
        server.fill(before, &repo, &d, 9);
        assert_eq!(server.lookup(&repo, &d).ok(), None, "a read from before the gc must not land");

        // Every bump changes what readers compare, also when the file is emptied.
        for _ in 0..(EPOCH_FILE_MAX + 3) {
            server.fill(gen_of(&server, &repo, &d), &repo, &d, 9);
            assert_eq!(server.lookup(&repo, &d).ok(), Some(9));
            gc.unlinked();
            assert_eq!(server.lookup(&repo, &d).ok(), None);
        }
        assert!(std::fs::metadata(gc.epoch_file.as_ref().unwrap()).unwrap().len() < EPOCH_FILE_MAX);
    }

    #[test]
    fn a_replica_trusts_a_link_for_less_than_a_remover_waits_counted_from_before_its_read() {
        let cache = LinkCache::for_replicas();
        let (repo, d) = key(4);
        assert!(cache.removal_wait() >= LEASE && LEASE > LEASE_TRUSTED);
        assert_eq!(LinkCache::new(None).removal_wait(), Duration::ZERO, "SQLite tells at once");

        let miss = gen_of(&cache, &repo, &d);
        cache.fill(miss, &repo, &d, 5);
        assert_eq!(cache.lookup(&repo, &d), Ok(5));
        // A read that began a lease ago lands already expired: trust counts from the read,
        // not from when its answer arrived.
        let old = gen_of(&cache, &repo, &key(5).1).resting_on(Instant::now() - LEASE_TRUSTED);
        cache.fill(old, &repo, &key(5).1, 6);
        assert!(cache.lookup(&repo, &key(5).1).is_err());
        // In this process a removal is still forgotten at once.
        cache.unlinked();
        assert!(cache.lookup(&repo, &d).is_err());
        assert!(cache.epoch_file.is_none(), "replicas share no files");
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let cache = LinkCache::new(None);
        let repo: RepoName = "a".parse().unwrap();
        for i in 0..=MAX_ENTRIES {
            let d = Digest::sha256_of(&i.to_le_bytes());
            cache.fill(gen_of(&cache, &repo, &d), &repo, &d, 1);
        }
        assert_eq!(cache.entries().count, 1);
    }
}
