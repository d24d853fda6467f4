//! The run-wide record of which destination repositories got which blob, so that a run of
//! many copies (`wharf sync`) moves each blob at most once per destination and mounts it
//! across repositories of the same registry.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use wharf_oci::{Digest, RepoName};

#[derive(Default)]
struct Entry {
    /// Repositories of the store known to hold the blob (`None`: a layout, which has one).
    holders: Vec<Option<RepoName>>,
    /// Held while the blob is being checked or moved into this store.
    busy: Arc<tokio::sync::Mutex<()>>,
}

/// Keyed by store (a registry host or a layout path, see `Endpoint::store_key`) and digest.
#[derive(Default)]
pub struct BlobLedger {
    entries: Mutex<HashMap<(String, Digest), Entry>>,
    /// Stores where a cross-repository mount has worked in this run.
    mounting: Mutex<HashSet<String>>,
}

impl BlobLedger {
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the blob's turn in this store: concurrent copies of the same blob wait here, then
    /// find it recorded and mount or skip it instead of moving it again.
    pub(crate) async fn turn(&self, store: &str, digest: &Digest) -> tokio::sync::OwnedMutexGuard<()> {
        let busy = {
            let mut map = self.entries.lock().expect("not poisoned");
            map.entry((store.to_owned(), digest.clone())).or_default().busy.clone()
        };
        busy.lock_owned().await
    }

    /// Repositories of `store` known to hold `digest` in this run.
    pub fn holders(&self, store: &str, digest: &Digest) -> Vec<Option<RepoName>> {
        let map = self.entries.lock().expect("not poisoned");
        map.get(&(store.to_owned(), digest.clone())).map(|e| e.holders.clone()).unwrap_or_default()
    }

    /// `repo` of `store` now holds `digest`.
    pub fn record(&self, store: &str, digest: &Digest, repo: Option<&RepoName>) {
        let mut map = self.entries.lock().expect("not poisoned");
        let entry = map.entry((store.to_owned(), digest.clone())).or_default();
        if !entry.holders.iter().any(|h| h.as_ref() == repo) {
            entry.holders.push(repo.cloned());
        }
    }

    /// Has a mount worked at `store` in this run? Then a mount from the repository itself
    /// tells whether the repository holds a blob (a registry that mounts links what the
    /// `from` repository holds, here the blob's own), and opens the upload when it does not.
    pub(crate) fn mounts_work(&self, store: &str) -> bool {
        self.mounting.lock().expect("not poisoned").contains(store)
    }

    pub(crate) fn note_mount_works(&self, store: &str) {
        self.mounting.lock().expect("not poisoned").insert(store.to_owned());
    }

    /// Number of (store, blob) pairs recorded.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("not poisoned").values().filter(|e| !e.holders.is_empty()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_holders() {
        let l = BlobLedger::new();
        let d = Digest::sha256_of(b"x");
        let a: RepoName = "a".parse().unwrap();
        assert!(l.holders("registry:h", &d).is_empty());
        let turn = l.turn("registry:h", &d).await;
        l.record("registry:h", &d, Some(&a));
        l.record("registry:h", &d, Some(&a));
        drop(turn);
        assert_eq!(l.holders("registry:h", &d), vec![Some(a)]);
        assert!(l.holders("registry:other", &d).is_empty());
        assert_eq!(l.len(), 1);
    }
}
