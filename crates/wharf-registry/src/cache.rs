//! Tag or digest → manifest bytes for the pull hot path (`GET /v2/<name>/manifests/<ref>`):
//! clients resolve a tag, then pull every child by digest, so both are hot.
//!
//! Only used when this process is the only writer of the metadata (SQLite): with PostgreSQL,
//! other replicas may move a tag at any time, so every read goes to the database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use wharf_oci::{Digest, Reference, RepoName};

/// A manifest as served: exact bytes, shared without copying.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

/// Bytes of manifests kept; past this the cache starts over (manifests are small and tags
/// few, so this is rarely reached and a simple reset is enough). 8 MiB holds thousands of
/// manifests and keeps the server, with its other caches (small blobs 4 MiB, blob links about
/// 2 MiB), within the 32 MiB of RSS that BENCHMARKS.md measures against.
const BUDGET: usize = 8 * 1024 * 1024;

/// The cached manifests by repository then reference (a lookup borrows, an invalidation drops
/// one repository's map), and the bytes they hold.
type Entries = (HashMap<RepoName, HashMap<Reference, ServedManifest>>, usize);

#[derive(Default)]
pub struct ManifestCache {
    entries: Mutex<Entries>,
    /// Bumped on every write. A reader fills the cache only if no write happened since it
    /// started reading the database, so a stale read never lands after an invalidation.
    generation: AtomicU64,
}

impl ManifestCache {
    pub fn get(&self, repo: &RepoName, reference: &Reference) -> Option<ServedManifest> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.0.get(repo)?.get(reference).cloned()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn fill(&self, generation: u64, repo: &RepoName, reference: &Reference, m: &ServedManifest) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.1 + m.content.len() > BUDGET {
            entries.0.clear();
            entries.1 = 0;
        }
        let (map, bytes) = &mut *entries;
        let replaced = map.entry(repo.clone()).or_default().insert(reference.clone(), m.clone());
        *bytes = *bytes + m.content.len() - replaced.map_or(0, |r| r.content.len());
    }

    /// Forget everything cached for `repo` (after any manifest or tag write or delete there).
    pub fn invalidate(&self, repo: &RepoName) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        let (map, bytes) = &mut *entries;
        if let Some(tags) = map.remove(repo) {
            *bytes -= tags.values().map(|m| m.content.len()).sum::<usize>();
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
        let cache = ManifestCache::default();
        let (repo, tag): (RepoName, Reference) = ("a".parse().unwrap(), "v1".parse().unwrap());
        let before = cache.generation();
        cache.invalidate(&repo); // a push lands while the reader is at the database
        cache.fill(before, &repo, &tag, &m("old"));
        assert!(cache.get(&repo, &tag).is_none());
        let now = cache.generation();
        cache.fill(now, &repo, &tag, &m("new"));
        assert_eq!(cache.get(&repo, &tag).unwrap().content, "new");
        cache.invalidate(&"b".parse().unwrap());
        assert!(cache.get(&repo, &tag).is_some(), "other repositories are untouched");
        cache.invalidate(&repo);
        assert!(cache.get(&repo, &tag).is_none());
    }

    #[test]
    fn digests_are_cached_beside_tags_and_dropped_with_them() {
        let cache = ManifestCache::default();
        let repo: RepoName = "a".parse().unwrap();
        let m = m("by digest");
        let by_digest = Reference::Digest(m.digest.clone());
        cache.fill(cache.generation(), &repo, &by_digest, &m);
        assert_eq!(cache.get(&repo, &by_digest).unwrap().content, "by digest");
        assert!(cache.get(&"b".parse().unwrap(), &by_digest).is_none(), "readable only in its repository");
        cache.invalidate(&repo); // a delete of the manifest
        assert!(cache.get(&repo, &by_digest).is_none());
    }

    #[test]
    fn refilling_a_tag_counts_its_bytes_once() {
        let cache = ManifestCache::default();
        let (repo, tag): (RepoName, Reference) = ("a".parse().unwrap(), "v1".parse().unwrap());
        cache.fill(cache.generation(), &repo, &tag, &m("first"));
        cache.fill(cache.generation(), &repo, &tag, &m("second!"));
        assert_eq!(cache.entries.lock().unwrap().1, "second!".len());
        cache.invalidate(&repo);
        assert_eq!(cache.entries.lock().unwrap().1, 0);
    }
}
