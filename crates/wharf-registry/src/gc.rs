//! Online garbage collection: mark and sweep, safe while the registry serves pushes.
//!
//! What is garbage:
//!
//! 1. **Blob links** that no manifest of their repository references (as config or layer) and
//!    that were made at least the grace period ago. A layer that was just uploaded or mounted
//!    and whose manifest is not pushed yet is younger than the grace period, so it survives.
//! 2. **Blobs** (the file in storage and the `blobs` row) that no repository links and no
//!    manifest in any repository references, and whose file was written (or last unlinked by
//!    garbage collection) at least the grace period ago. A file with no row at all (a crash
//!    between writing and linking it) is garbage too once it is older than the grace period.
//!
//! Never garbage: manifests (deleting them is the client's job, and gc never deletes one), a
//! blob referenced by any manifest anywhere, and the absent children of a sparse index (they
//! are simply not there: nothing to collect).
//!
//! How a concurrent push wins:
//!
//! - Marking reads; sweeping re-checks every condition in a write transaction
//!   ([`MetadataStore::begin_gc`]) during which nothing can be linked (SQLite's write lock; on
//!   PostgreSQL a lock on `blobs` and `blob_links` that waits for every transaction linking a
//!   blob). A link or a manifest reference made between mark and sweep is seen there, and the
//!   blob stays.
//! - Removing a blob's link first sets its file's modification time to now, so the blob itself
//!   is deleted only a whole grace period after gc unlinked it: a push that checked the link
//!   just before gc removed it (a manifest push, a mount) has that long to finish, and it
//!   re-creates the link when it does.
//! - A blob to delete is first moved to the store's trash (`gc-trash/` under the storage root,
//!   or under the bucket's prefix on S3), inside the sweep
//!   transaction. If its modification time shows it was written or touched since the mark, or
//!   if the commit fails, it is moved back; if a link to it appears right after the commit (a
//!   writer that found the file before it moved), it is moved back too. Only then is it
//!   removed. Blobs a crash left in the trash are put back or removed by the next run.
//!
//! A grace period of zero is only for tests and quiet registries: it gives a push in flight no
//! time at all.
//!
//! [`GarbageCollector::run`] does everything; the phases ([`GarbageCollector::mark_links`],
//! [`GarbageCollector::sweep_links`], [`GarbageCollector::mark_blobs`],
//! [`GarbageCollector::sweep_blobs`]) are public so that tests can act between mark and sweep.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wharf_metadata::MetadataStore;
use wharf_oci::{Digest, RepoName};
use wharf_storage::BlobStore;

use crate::Registry;
use crate::error::Result;

/// The grace period of `wharf gc` and of the background collection in `wharf serve`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Links re-checked and removed per transaction.
const LINK_BATCH: usize = 256;
/// Blobs re-checked and deleted per transaction (each moves a file while pushes wait).
const BLOB_BATCH: usize = 64;

/// A blob link garbage collection marked (or removed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkCandidate {
    #[serde(serialize_with = "display")]
    pub repository: RepoName,
    pub digest: Digest,
    /// The blob's size.
    pub size: u64,
    /// When the link was made (unix seconds). The sweep removes only this link, not one
    /// made again since.
    #[serde(skip)]
    pub created_at: i64,
}

/// A blob garbage collection marked (or deleted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlobCandidate {
    pub digest: Digest,
    /// Bytes of its file; 0 when only the `blobs` row was left.
    pub size: u64,
}

/// What [`GarbageCollector::sweep_blobs`] did with the marked blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobSweep {
    pub deleted: Vec<BlobCandidate>,
    /// Marked, but linked, referenced or written again before the sweep: kept.
    pub kept: Vec<Digest>,
}

/// Links removed in one repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RepoGcReport {
    #[serde(serialize_with = "display")]
    pub repository: RepoName,
    pub links_removed: u64,
    /// Sum of the sizes of the blobs unlinked there.
    pub bytes_unlinked: u64,
}

/// The outcome of a run (or, with `dry_run`, what a run would do now).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub grace_seconds: u64,
    pub links_removed: u64,
    pub blobs_deleted: u64,
    /// Bytes of the blob files deleted.
    pub bytes_freed: u64,
    /// Blobs marked but found in use again at the sweep (a concurrent push won).
    pub blobs_kept: u64,
    /// Per repository, sorted by name.
    pub repositories: Vec<RepoGcReport>,
    pub removed_links: Vec<LinkCandidate>,
    pub deleted_blobs: Vec<BlobCandidate>,
}

impl GcReport {
    fn new(dry_run: bool, grace: Duration, links: Vec<LinkCandidate>, blobs: BlobSweep) -> GcReport {
        let mut per_repo: BTreeMap<RepoName, RepoGcReport> = BTreeMap::new();
        for l in &links {
            let r = per_repo.entry(l.repository.clone()).or_insert_with(|| RepoGcReport {
                repository: l.repository.clone(),
                links_removed: 0,
                bytes_unlinked: 0,
            });
            r.links_removed += 1;
            r.bytes_unlinked += l.size;
        }
        GcReport {
            dry_run,
            grace_seconds: grace.as_secs(),
            links_removed: links.len() as u64,
            blobs_deleted: blobs.deleted.len() as u64,
            bytes_freed: blobs.deleted.iter().map(|b| b.size).sum(),
            blobs_kept: blobs.kept.len() as u64,
            repositories: per_repo.into_values().collect(),
            removed_links: links,
            deleted_blobs: blobs.deleted,
        }
    }

    /// One line for logs and the terminal.
    pub fn summary(&self) -> String {
        let (unlink, delete) =
            if self.dry_run { ("would remove", "would delete") } else { ("removed", "deleted") };
        let mut s = format!(
            "{unlink} {} blob link(s) in {} repositories, {delete} {} blob(s), {} {} bytes",
            self.links_removed,
            self.repositories.len(),
            self.blobs_deleted,
            if self.dry_run { "would free" } else { "freed" },
            self.bytes_freed,
        );
        if self.blobs_kept > 0 {
            s.push_str(&format!(", kept {} blob(s) a concurrent push linked", self.blobs_kept));
        }
        s.push_str(&format!(" (grace {}s)", self.grace_seconds));
        s
    }
}

fn display<S: serde::Serializer>(v: &impl Display, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Garbage collection over one blob store and one metadata store (see the module docs).
#[derive(Clone, Debug)]
pub struct GarbageCollector {
    blobs: BlobStore,
    meta: MetadataStore,
    grace: Duration,
}

impl GarbageCollector {
    pub fn new(blobs: BlobStore, meta: MetadataStore, grace: Duration) -> GarbageCollector {
        GarbageCollector { blobs, meta, grace }
    }

    /// Over the registry's stores.
    pub fn for_registry(registry: &Registry, grace: Duration) -> GarbageCollector {
        GarbageCollector::new(registry.blob_store().clone(), registry.metadata().clone(), grace)
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Mark and sweep links, then blobs. With `dry_run`, only mark, and report what a run
    /// would remove now (nothing is changed, not even a file's modification time).
    pub async fn run(&self, dry_run: bool) -> Result<GcReport> {
        if !dry_run {
            self.recover_trash().await?;
        }
        let marked_links = self.mark_links().await?;
        let (links, marked_blobs) = if dry_run {
            let blobs = self.mark_blobs(&marked_links).await?;
            (marked_links, blobs)
        } else {
            let removed = self.sweep_links(&marked_links).await?;
            (removed, self.mark_blobs(&[]).await?)
        };
        let blobs = if dry_run {
            BlobSweep { deleted: marked_blobs, kept: Vec::new() }
        } else {
            self.sweep_blobs(&marked_blobs).await?
        };
        Ok(GcReport::new(dry_run, self.grace, links, blobs))
    }

    /// Links older than the grace period that no manifest of their repository references.
    pub async fn mark_links(&self) -> Result<Vec<LinkCandidate>> {
        let cutoff = unix_now().saturating_sub(i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX));
        Ok(self
            .meta
            .unreferenced_links(cutoff)
            .await?
            .into_iter()
            .map(|l| LinkCandidate {
                repository: l.repo,
                digest: l.digest,
                size: l.size,
                created_at: l.created_at,
            })
            .collect())
    }

    /// Removes the marked links that are still unreferenced (a manifest pushed since the
    /// mark keeps its blobs linked), touching each blob's file first so that the blob itself
    /// outlives its last link by a grace period. Returns the links removed.
    pub async fn sweep_links(&self, marked: &[LinkCandidate]) -> Result<Vec<LinkCandidate>> {
        let mut removed = Vec::new();
        for chunk in marked.chunks(LINK_BATCH) {
            let mut ready = Vec::with_capacity(chunk.len());
            let mut touched = HashSet::new();
            for link in chunk {
                if touched.contains(&link.digest) {
                    ready.push(link);
                    continue;
                }
                match self.blobs.touch(&link.digest).await {
                    Ok(_) => {
                        touched.insert(link.digest.clone());
                        ready.push(link);
                    }
                    Err(e) => tracing::warn!(
                        repository = %link.repository, digest = %link.digest, error = %e,
                        "gc: cannot touch the blob file; its link stays"
                    ),
                }
            }
            let mut tx = self.meta.begin_gc().await?;
            let mut batch = Vec::new();
            for link in ready {
                if tx.remove_link_if_unreferenced(&link.repository, &link.digest, link.created_at).await? {
                    batch.push(link.clone());
                }
            }
            tx.commit().await?;
            for link in &batch {
                tracing::debug!(repository = %link.repository, digest = %link.digest, "gc: unlinked blob");
            }
            removed.extend(batch);
        }
        Ok(removed)
    }

    /// Blobs that no repository links and no manifest references, and files with no `blobs`
    /// row, whose file is older than the grace period (or is gone), sorted by digest.
    ///
    /// `assume_unlinked` serves dry runs: links that are taken as already removed. With a
    /// grace period of zero a blob all of whose links are among them counts too (with a
    /// longer one, unlinking makes the blob young again, so it would not be deleted yet).
    pub async fn mark_blobs(&self, assume_unlinked: &[LinkCandidate]) -> Result<Vec<BlobCandidate>> {
        let mut digests: BTreeSet<Digest> =
            self.meta.unlinked_blobs().await?.into_iter().map(|(d, _)| d).collect();
        let files = self.blobs.list_blobs().await?;
        let known: HashSet<Digest> = self.meta.known_blobs(&files).await?.into_iter().collect();
        // A metadata database that knows none of the stored blobs is almost certainly not this
        // storage's (a mistyped --database, a fresh schema): collecting would delete everything.
        if !files.is_empty() && known.is_empty() {
            return Err(wharf_metadata::MetadataError::Corrupt(format!(
                "storage holds {} blobs but the metadata database knows none of them: is it this \
                 registry's database? Refusing to collect anything",
                files.len()
            ))
            .into());
        }
        digests.extend(files.into_iter().filter(|d| !known.contains(d)));

        if self.grace.is_zero() && !assume_unlinked.is_empty() {
            let mut by_digest: HashMap<&Digest, HashSet<&RepoName>> = HashMap::new();
            for l in assume_unlinked {
                by_digest.entry(&l.digest).or_default().insert(&l.repository);
            }
            for (digest, repos) in by_digest {
                let linked = self.meta.repos_with_blob(digest).await?;
                if linked.iter().all(|r| repos.contains(r))
                    && !self.meta.blob_referenced_anywhere(digest).await?
                {
                    digests.insert(digest.clone());
                }
            }
        }

        let now = SystemTime::now();
        let mut out = Vec::with_capacity(digests.len());
        for digest in digests {
            let size = match self.blobs.blob_age(&digest).await? {
                Some(stored) if age(now, stored.modified) < self.grace => continue,
                Some(stored) => stored.size,
                None => 0,
            };
            out.push(BlobCandidate { digest, size });
        }
        Ok(out)
    }

    /// Deletes the marked blobs that are still garbage: in each transaction the `blobs` rows
    /// are deleted only where no link and no manifest reference exists now, and the files of
    /// those go to the trash; the files come back if anything changed (see the module docs).
    pub async fn sweep_blobs(&self, marked: &[BlobCandidate]) -> Result<BlobSweep> {
        let mut out = BlobSweep::default();
        if marked.is_empty() {
            return Ok(out);
        }
        for chunk in marked.chunks(BLOB_BATCH) {
            let mut batch: Vec<Digest> = chunk.iter().map(|c| c.digest.clone()).collect();
            while !batch.is_empty() {
                let mut tx = self.meta.begin_gc().await?;
                let freed = tx.delete_blobs_if_unreferenced(&batch).await?;
                let had_row: HashSet<Digest> = freed.iter().filter(|f| f.1).map(|f| f.0.clone()).collect();
                let free: Vec<Digest> = freed.into_iter().map(|f| f.0).collect();
                let free_set: HashSet<&Digest> = free.iter().collect();
                out.kept.extend(batch.iter().filter(|d| !free_set.contains(d)).cloned());

                let now = SystemTime::now();
                let mut moved = Vec::new();
                let mut young = Vec::new();
                let mut failed = None;
                for digest in &free {
                    match self.blobs.trash(digest).await {
                        Ok(Some(t)) => {
                            if age(now, t.modified) < self.grace {
                                young.push(digest.clone());
                            }
                            moved.push(Trashed { digest: digest.clone(), len: t.size });
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if failed.is_some() || !young.is_empty() {
                    // Written or unlinked since the mark: put everything back and retry the
                    // batch without those.
                    self.restore_all(&moved).await;
                    if let Err(e) = tx.rollback().await {
                        tracing::warn!(error = %e, "gc: rollback failed");
                    }
                    if let Some(e) = failed {
                        return Err(e.into());
                    }
                    out.kept.extend(young.iter().cloned());
                    batch = free.into_iter().filter(|d| !young.contains(d)).collect();
                    continue;
                }
                if let Err(e) = tx.commit().await {
                    self.restore_all(&moved).await;
                    return Err(e.into());
                }
                // A writer that found the file before it moved may have linked it since.
                let relinked: HashSet<Digest> = self.meta.known_blobs(&free).await?.into_iter().collect();
                let mut sizes: HashMap<&Digest, u64> = HashMap::new();
                for t in &moved {
                    let result = if relinked.contains(&t.digest) {
                        self.blobs.restore(&t.digest).await
                    } else {
                        sizes.insert(&t.digest, t.len);
                        self.blobs.purge(&t.digest).await
                    };
                    if let Err(e) = result {
                        tracing::warn!(digest = %t.digest, error = %e, "gc: trashed blob");
                    }
                }
                for digest in &free {
                    if relinked.contains(digest) {
                        out.kept.push(digest.clone());
                    } else if let Some(size) = sizes.get(digest).copied() {
                        tracing::debug!(%digest, size, "gc: deleted blob");
                        out.deleted.push(BlobCandidate { digest: digest.clone(), size });
                    } else if had_row.contains(digest) {
                        // Only the row was left (its file had gone already).
                        tracing::debug!(%digest, "gc: deleted the row of a blob without a file");
                        out.deleted.push(BlobCandidate { digest: digest.clone(), size: 0 });
                    }
                    // Neither row nor file: someone else deleted it meanwhile; nothing to report.
                }
                break;
            }
        }
        out.kept.sort();
        out.kept.dedup();
        Ok(out)
    }

    /// Puts back, or removes, blobs a crashed run left in the trash: back if the blob has a
    /// `blobs` row (the transaction that deleted it did not commit), removed otherwise.
    async fn recover_trash(&self) -> Result<()> {
        let found = self.blobs.list_trash().await?;
        if found.is_empty() {
            return Ok(());
        }
        let known: HashSet<Digest> = self.meta.known_blobs(&found).await?.into_iter().collect();
        for digest in found {
            let restored = known.contains(&digest);
            let result =
                if restored { self.blobs.restore(&digest).await } else { self.blobs.purge(&digest).await };
            match result {
                Ok(()) => tracing::info!(%digest, restored, "gc: recovered a trashed blob"),
                Err(e) => tracing::warn!(%digest, error = %e, "gc: cannot recover a trashed blob"),
            }
        }
        Ok(())
    }

    async fn restore_all(&self, moved: &[Trashed]) {
        for t in moved {
            if let Err(e) = self.blobs.restore(&t.digest).await {
                tracing::error!(digest = %t.digest, error = %e, "gc: cannot put a blob back");
            }
        }
    }
}

/// A blob moved to the trash.
struct Trashed {
    digest: Digest,
    len: u64,
}

/// How long ago `then` was; a time stamped "in the future" (an object store's clock is not
/// this machine's) counts as now.
fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads() {
        let report = GcReport::new(
            true,
            DEFAULT_GRACE,
            vec![LinkCandidate {
                repository: "a/b".parse().unwrap(),
                digest: Digest::sha256_of(b"x"),
                size: 1,
                created_at: 0,
            }],
            BlobSweep {
                deleted: vec![BlobCandidate { digest: Digest::sha256_of(b"x"), size: 1 }],
                kept: vec![],
            },
        );
        assert_eq!(
            report.summary(),
            "would remove 1 blob link(s) in 1 repositories, would delete 1 blob(s), would free 1 bytes (grace 3600s)"
        );
        assert_eq!(report.repositories[0].links_removed, 1);
    }
}
