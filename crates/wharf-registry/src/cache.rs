//! Tag or digest → manifest bytes for the pull hot path (`GET /v2/<name>/manifests/<ref>`):
//! clients resolve a tag, then pull every child by digest, so both are hot.
//!
//! Invalidated by this process's own writes (after their commit, per repository). On SQLite
//! this process is the only writer of manifests and tags, so an entry holds until then. On
//! PostgreSQL other replicas write too: an entry is a lease, and whoever deletes a manifest or
//! a tag or moves a tag waits
//! [`removal_wait`](wharf_metadata::MetadataStore::removal_wait) after its commit before it
//! answers, so that once it has, no replica serves the old state (the rule of
//! [`wharf_metadata::freshness`]). Reads that find nothing are never remembered, so a new tag
//! or manifest needs no wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wharf_metadata::StoredManifest;
use wharf_metadata::freshness::{Expiry, Freshness, ReadStart};
use wharf_oci::{Digest, Reference, RepoName};

/// A manifest as served: exact bytes, shared without copying.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

impl From<StoredManifest> for ServedManifest {
    fn from(m: StoredManifest) -> ServedManifest {
        ServedManifest { digest: m.digest, media_type: m.media_type, content: m.content.into() }
    }
}

/// Bytes of manifests kept; past this the cache starts over (manifests are small and tags
/// few, so this is rarely reached and a simple reset is enough). 8 MiB holds thousands of
/// manifests and keeps the server, with its other caches (small blobs 4 MiB, blob links about
/// 2 MiB), within the 32 MiB of RSS that BENCHMARKS.md measures against.
const BUDGET: usize = 8 * 1024 * 1024;

/// A cached manifest and until when it may be served.
type Entry = (ServedManifest, Expiry);

/// The cached manifests by repository then reference (a lookup borrows, an invalidation drops
/// one repository's map), and the bytes they hold.
type Entries = (HashMap<RepoName, HashMap<Reference, Entry>>, usize);

pub struct ManifestCache {
    entries: Mutex<Entries>,
    /// Writes since a read began (its fill is dropped), and on PostgreSQL the lease.
    freshness: Freshness,
}

impl ManifestCache {
    /// A cache whose entries are served for `lease` after the read began (`None`: until this
    /// process invalidates them).
    pub fn new(lease: Option<Duration>) -> ManifestCache {
        ManifestCache { entries: Mutex::default(), freshness: Freshness::new(lease) }
    }

    pub fn get(&self, repo: &RepoName, reference: &Reference) -> Option<ServedManifest> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (m, until) = entries.0.get(repo)?.get(reference)?;
        until.live_at(Instant::now()).then(|| m.clone())
    }

    /// Call before reading the database for an entry that [`ManifestCache::get`] missed.
    pub fn read_start(&self) -> ReadStart {
        self.freshness.read_start()
    }

    pub fn fill(&self, read: ReadStart, repo: &RepoName, reference: &Reference, m: &ServedManifest) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let Some(until) = self.freshness.admit(read) else { return };
        if entries.1 + m.content.len() > BUDGET {
            entries.0.clear();
            entries.1 = 0;
        }
        let (map, bytes) = &mut *entries;
        let replaced = map.entry(repo.clone()).or_default().insert(reference.clone(), (m.clone(), until));
        *bytes = *bytes + m.content.len() - replaced.map_or(0, |r| r.0.content.len());
    }

    /// Forget everything cached for `repo` (after any manifest or tag write or delete there).
    pub fn invalidate(&self, repo: &RepoName) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.freshness.invalidate();
        let (map, bytes) = &mut *entries;
        if let Some(tags) = map.remove(repo) {
            *bytes -= tags.values().map(|(m, _)| m.content.len()).sum::<usize>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &'static str) -> ServedManifest {
        ServedManifest {
            digest: Digest::sha256_of(s.as_bytes()),
            media_type: "x".into(),
            content: Bytes::from_static(s.as_bytes()),
        }
    }

    #[test]
    fn a_write_during_a_read_keeps_the_stale_value_out() {
        let cache = ManifestCache::new(None);
        let (repo, tag): (RepoName, Reference) = ("a".parse().unwrap(), "v1".parse().unwrap());
        let before = cache.read_start();
        cache.invalidate(&repo); // a push lands while the reader is at the database
        cache.fill(before, &repo, &tag, &m("old"));
        assert!(cache.get(&repo, &tag).is_none());
        let now = cache.read_start();
        cache.fill(now, &repo, &tag, &m("new"));
        assert_eq!(cache.get(&repo, &tag).unwrap().content, "new");
        cache.invalidate(&"b".parse().unwrap());
        assert!(cache.get(&repo, &tag).is_some(), "other repositories are untouched");
        cache.invalidate(&repo);
        assert!(cache.get(&repo, &tag).is_none());
    }

    #[test]
    fn digests_are_cached_beside_tags_and_dropped_with_them() {
        let cache = ManifestCache::new(None);
        let repo: RepoName = "a".parse().unwrap();
        let m = m("by digest");
        let by_digest = Reference::Digest(m.digest.clone());
        cache.fill(cache.read_start(), &repo, &by_digest, &m);
        assert_eq!(cache.get(&repo, &by_digest).unwrap().content, "by digest");
        assert!(cache.get(&"b".parse().unwrap(), &by_digest).is_none(), "readable only in its repository");
        cache.invalidate(&repo); // a delete of the manifest
        assert!(cache.get(&repo, &by_digest).is_none());
    }

    #[test]
    fn refilling_a_tag_counts_its_bytes_once() {
        let cache = ManifestCache::new(None);
        let (repo, tag): (RepoName, Reference) = ("a".parse().unwrap(), "v1".parse().unwrap());
        cache.fill(cache.read_start(), &repo, &tag, &m("first"));
        cache.fill(cache.read_start(), &repo, &tag, &m("second!"));
        assert_eq!(cache.entries.lock().unwrap().1, "second!".len());
        cache.invalidate(&repo);
        assert_eq!(cache.entries.lock().unwrap().1, 0);
    }

    #[test]
    fn a_replica_serves_an_entry_for_its_lease_counted_from_before_the_read() {
        let lease = Duration::from_millis(200);
        let cache = ManifestCache::new(Some(lease));
        let (repo, tag): (RepoName, Reference) = ("a".parse().unwrap(), "v1".parse().unwrap());
        cache.fill(cache.read_start(), &repo, &tag, &m("fresh"));
        assert_eq!(cache.get(&repo, &tag).unwrap().content, "fresh");

        // A read that began a lease ago lands already expired.
        let old = cache.read_start().resting_on(Instant::now() - lease);
        let other: Reference = "v2".parse().unwrap();
        cache.fill(old, &repo, &other, &m("old"));
        assert!(cache.get(&repo, &other).is_none());

        // An entry whose lease ran out is not served, though still held.
        let began = Instant::now() - Duration::from_millis(50);
        cache.fill(cache.read_start().resting_on(began), &repo, &other, &m("short"));
        assert_eq!(cache.get(&repo, &other).unwrap().content, "short");
        std::thread::sleep(lease);
        assert!(cache.get(&repo, &other).is_none(), "served past its lease");
    }
}
