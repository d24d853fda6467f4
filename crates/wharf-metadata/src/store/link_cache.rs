//! Which blobs are linked to which repository, remembered for the blob pull hot path (every
//! `GET` and `HEAD /v2/<name>/blobs/<digest>` asks). On SQLite each query is a round trip to a
//! connection's worker thread, two context switches that cost more than serving a small blob
//! from memory; this cache answers instead.
//!
//! SQLite only: with PostgreSQL other replicas unlink at any time, so every read goes to the
//! database. Only links that exist are kept (a link that appears is simply read next time);
//! what removes one must say so:
//!
//! - in this process, [`LinkCache::unlinked`] after the commit (blob `DELETE`, gc);
//! - in another process (`wharf gc` against a served data directory), the same call grows the
//!   *epoch file* beside the database (`<db>-link-epoch`), whose size and time every lookup
//!   compares with what it saw when it filled: a request that starts after `wharf gc` is done
//!   never sees a link it removed.
//!
//! A fill is dropped when anything was unlinked since its read began (the generation), so a
//! stale read never lands after an invalidation. Entries also expire after [`MAX_AGE`], which
//! bounds the damage if the epoch file cannot be written.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use wharf_oci::{Digest, RepoName};

/// How long a remembered link is trusted without a word from its epoch file.
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
    links: HashMap<RepoName, HashMap<Digest, (u64, Instant)>>,
    count: usize,
    /// The epoch file as it was when these entries were filled.
    epoch: Epoch,
}

pub(crate) struct LinkCache {
    entries: Mutex<Entries>,
    /// Bumped on every invalidation: a fill from a read that began before it is dropped.
    generation: AtomicU64,
    /// `None` for an in-memory database, which no other process can open.
    epoch_file: Option<PathBuf>,
}

impl LinkCache {
    /// The cache of the SQLite database at `db_path` (`None`: in memory).
    pub(crate) fn new(db_path: Option<&Path>) -> LinkCache {
        let epoch_file = db_path.map(|p| {
            let mut name = p.as_os_str().to_owned();
            name.push("-link-epoch");
            PathBuf::from(name)
        });
        let cache = LinkCache { entries: Mutex::default(), generation: AtomicU64::new(0), epoch_file };
        cache.entries().epoch = cache.read_epoch();
        cache
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
            self.generation.fetch_add(1, Ordering::AcqRel);
            entries.links.clear();
            entries.count = 0;
            entries.epoch = now;
        }
    }

    /// `Ok(size)` if `digest` is remembered as linked to `repo`; else `Err(generation)`, to
    /// read the link from the database and pass to [`LinkCache::fill`]. One lock, one `stat`.
    pub(crate) fn lookup(&self, repo: &RepoName, digest: &Digest) -> Result<u64, u64> {
        let mut entries = self.entries();
        self.check_epoch(&mut entries);
        match entries.links.get(repo).and_then(|m| m.get(digest)) {
            Some(&(size, at)) if at.elapsed() < MAX_AGE => Ok(size),
            _ => Err(self.generation.load(Ordering::Acquire)),
        }
    }

    /// Remembers a link read from the database, unless something was unlinked since the read
    /// began (`generation`).
    pub(crate) fn fill(&self, generation: u64, repo: &RepoName, digest: &Digest, size: u64) {
        let mut entries = self.entries();
        self.check_epoch(&mut entries);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.count >= MAX_ENTRIES {
            entries.links.clear();
            entries.count = 0;
        }
        let fresh = entries
            .links
            .entry(repo.clone())
            .or_default()
            .insert(digest.clone(), (size, Instant::now()))
            .is_none();
        entries.count += usize::from(fresh);
    }

    /// Links were removed (committed): forget every remembered link here, and tell other
    /// processes by changing the epoch file.
    pub(crate) fn unlinked(&self) {
        {
            let mut entries = self.entries();
            self.generation.fetch_add(1, Ordering::AcqRel);
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

    /// The generation a reader that missed `digest` would pass to `fill`.
    fn gen_of(cache: &LinkCache, repo: &RepoName, digest: &Digest) -> u64 {
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
