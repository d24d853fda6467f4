//! Garbage collection and fsck: what may be unlinked or deleted, the paged scans, and the
//! sweep's write transaction ([`GcTransaction`]).

use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use wharf_oci::{Digest, RepoName};

use super::link_cache::LinkCache;
use super::{Backend, MetadataStore, parse_repo, placeholders, row_digest, row_size};
use crate::{Result, StoredManifest};

/// A blob's link to a repository, with the blob's size and when the link was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLink {
    pub repo: RepoName,
    pub digest: Digest,
    /// Size from the `blobs` row.
    pub size: u64,
    /// Unix seconds.
    pub created_at: i64,
}

/// A manifest's reference to a blob (config or layer) that is not linked to the manifest's
/// repository: the blob cannot be read there although a manifest needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnlinkedReference {
    pub repo: RepoName,
    pub manifest: Digest,
    pub blob: Digest,
}

fn blob_link(row: &AnyRow) -> Result<BlobLink> {
    Ok(BlobLink {
        repo: parse_repo(&row.try_get::<String, _>("repo")?)?,
        digest: row_digest(row, "digest")?,
        size: row_size(row, "size")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Digests per `IN (...)` list.
const IN_BATCH: usize = 256;

impl MetadataStore {
    /// Blob links made at or before `cutoff` (unix seconds) that no manifest of their own
    /// repository references (as config or layer), sorted by repository then digest: what
    /// garbage collection may unlink.
    pub async fn unreferenced_links(&self, cutoff: i64) -> Result<Vec<BlobLink>> {
        let rows = sqlx::query(
            "SELECT l.repo, l.digest, b.size, l.created_at FROM blob_links l \
             JOIN blobs b ON b.digest = l.digest \
             WHERE l.created_at <= $1 AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb \
                 WHERE mb.repo = l.repo AND mb.blob_digest = l.digest) \
             ORDER BY l.repo, l.digest",
        )
        .bind(cutoff)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(blob_link).collect()
    }

    /// Blobs (digest and size) that no repository links and no manifest in any repository
    /// references, sorted by digest: what garbage collection may delete.
    pub async fn unlinked_blobs(&self) -> Result<Vec<(Digest, u64)>> {
        // SQLite evaluates an uncorrelated `NOT IN` once into a temporary index; PostgreSQL
        // turns `NOT EXISTS` into one anti-join. (There is no index on `blob_digest` alone.)
        let not_referenced = match self.backend {
            Backend::Sqlite => "b.digest NOT IN (SELECT blob_digest FROM manifest_blobs)",
            Backend::Postgres => {
                "NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)"
            }
        };
        let rows = sqlx::query(&format!(
            "SELECT b.digest, b.size FROM blobs b \
             WHERE NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest) \
             AND {not_referenced} ORDER BY b.digest"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((row_digest(r, "digest")?, row_size(r, "size")?))).collect()
    }

    /// Those of `digests` that have a `blobs` row (linked or not), in the order given.
    pub async fn known_blobs(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let mut known = std::collections::HashSet::new();
        for chunk in digests.chunks(IN_BATCH) {
            let sql = format!("SELECT digest FROM blobs WHERE digest IN ({})", placeholders(1, chunk.len()));
            let mut q = sqlx::query(&sql);
            for d in chunk {
                q = q.bind(d.to_string());
            }
            for row in q.fetch_all(&self.read).await? {
                known.insert(row.try_get::<String, _>("digest")?);
            }
        }
        Ok(digests.iter().filter(|d| known.contains(&d.to_string())).cloned().collect())
    }

    /// True if a manifest in any repository references the blob as config or layer.
    pub async fn blob_referenced_anywhere(&self, digest: &Digest) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM manifest_blobs WHERE blob_digest = $1 LIMIT 1")
            .bind(digest.to_string())
            .fetch_optional(&self.read)
            .await?;
        Ok(row.is_some())
    }

    /// Opens the write transaction in which garbage collection re-checks and removes what it
    /// marked. While it is open no blob can be linked anywhere: on SQLite it holds the
    /// database's write lock (`BEGIN IMMEDIATE`), on PostgreSQL a `SHARE ROW EXCLUSIVE` lock on
    /// `blobs` and `blob_links`, which waits for every transaction that is linking a blob and
    /// makes new ones wait. So a link made between mark and sweep is either seen by the
    /// re-check (and wins) or made after the commit (and finds the blob gone, like any link to
    /// an unknown blob). Keep it short: pushes wait for it.
    pub async fn begin_gc(&self) -> Result<GcTransaction> {
        let mut tx = self.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("LOCK TABLE blobs, blob_links IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        Ok(GcTransaction { tx, backend: self.backend, links: self.links.clone(), removed_links: false })
    }

    /// Up to `limit` blob links, ordered by digest then repository, strictly after `after`
    /// (a previous page's last `(digest, repo)`). For fsck.
    pub async fn blob_links_page(
        &self,
        after: Option<(&Digest, &RepoName)>,
        limit: u32,
    ) -> Result<Vec<BlobLink>> {
        let (digest, repo) =
            after.map_or((String::new(), String::new()), |(d, r)| (d.to_string(), r.to_string()));
        let rows = sqlx::query(
            "SELECT l.repo, l.digest, b.size, l.created_at FROM blob_links l \
             JOIN blobs b ON b.digest = l.digest \
             WHERE l.digest > $1 OR (l.digest = $1 AND l.repo > $2) \
             ORDER BY l.digest, l.repo LIMIT $3",
        )
        .bind(digest)
        .bind(repo)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(blob_link).collect()
    }

    /// Up to `limit` stored manifests (repository and exact bytes), ordered by repository then
    /// digest, strictly after `after` (a previous page's last `(repo, digest)`). For fsck.
    pub async fn manifests_page(
        &self,
        after: Option<(&RepoName, &Digest)>,
        limit: u32,
    ) -> Result<Vec<(RepoName, StoredManifest)>> {
        let (repo, digest) =
            after.map_or((String::new(), String::new()), |(r, d)| (r.to_string(), d.to_string()));
        let rows = sqlx::query(
            "SELECT repo, digest, media_type, content FROM manifests \
             WHERE repo > $1 OR (repo = $1 AND digest > $2) ORDER BY repo, digest LIMIT $3",
        )
        .bind(repo)
        .bind(digest)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((parse_repo(&r.try_get::<String, _>("repo")?)?, super::manifests::stored_manifest(r)?))
            })
            .collect()
    }

    /// Config and layer references of manifests whose blob is not linked to the manifest's
    /// repository, sorted. Empty in a consistent store: a manifest push links its blobs.
    pub async fn unlinked_references(&self) -> Result<Vec<UnlinkedReference>> {
        let rows = sqlx::query(
            "SELECT mb.repo, mb.manifest_digest, mb.blob_digest FROM manifest_blobs mb \
             WHERE NOT EXISTS (SELECT 1 FROM blob_links l \
                 WHERE l.repo = mb.repo AND l.digest = mb.blob_digest) \
             ORDER BY mb.repo, mb.manifest_digest, mb.blob_digest",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UnlinkedReference {
                    repo: parse_repo(&r.try_get::<String, _>("repo")?)?,
                    manifest: row_digest(r, "manifest_digest")?,
                    blob: row_digest(r, "blob_digest")?,
                })
            })
            .collect()
    }
}

/// The write transaction of a garbage-collection sweep (see [`MetadataStore::begin_gc`]).
/// Every removal re-checks its condition inside it. Dropped without
/// [`GcTransaction::commit`], it rolls back.
pub struct GcTransaction {
    tx: Transaction<'static, Any>,
    backend: Backend,
    links: Option<Arc<LinkCache>>,
    /// Whether a link was removed: remembered links must then be forgotten at the commit.
    removed_links: bool,
}

impl std::fmt::Debug for GcTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcTransaction").field("backend", &self.backend.name()).finish_non_exhaustive()
    }
}

impl GcTransaction {
    /// Removes the link of `digest` to `repo` if it was made at or before `cutoff` and no
    /// manifest of `repo` references the blob now. True if it was removed.
    pub async fn remove_link_if_unreferenced(
        &mut self,
        repo: &RepoName,
        digest: &Digest,
        cutoff: i64,
    ) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM blob_links WHERE repo = $1 AND digest = $2 AND created_at <= $3 \
             AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb \
                 WHERE mb.repo = $1 AND mb.blob_digest = $2)",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .bind(cutoff)
        .execute(&mut *self.tx)
        .await?;
        let removed = done.rows_affected() > 0;
        self.removed_links |= removed;
        Ok(removed)
    }

    /// Deletes the `blobs` rows of those of `digests` that no repository links and no manifest
    /// references now. Returns the digests that have no row any more, each with `true` if its
    /// row was deleted here (`false`: it had none): their files may go. The others are in use
    /// again and stay.
    pub async fn delete_blobs_if_unreferenced(&mut self, digests: &[Digest]) -> Result<Vec<(Digest, bool)>> {
        let not_referenced = match self.backend {
            Backend::Sqlite => "digest NOT IN (SELECT blob_digest FROM manifest_blobs)",
            Backend::Postgres => {
                "NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = blobs.digest)"
            }
        };
        let mut existed = std::collections::HashSet::new();
        let mut remaining = std::collections::HashSet::new();
        for chunk in digests.chunks(IN_BATCH) {
            let list = placeholders(1, chunk.len());
            let select = format!("SELECT digest FROM blobs WHERE digest IN ({list})");
            let delete = format!(
                "DELETE FROM blobs WHERE digest IN ({list}) \
                 AND NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = blobs.digest) \
                 AND {not_referenced}"
            );
            // Rows before, the conditional delete, rows after. Every link references its
            // `blobs` row (foreign key), so no row means no link.
            for (sql, into) in
                [(&select, Some(&mut existed)), (&delete, None), (&select, Some(&mut remaining))]
            {
                let mut q = sqlx::query(sql);
                for d in chunk {
                    q = q.bind(d.to_string());
                }
                match into {
                    Some(set) => {
                        for row in q.fetch_all(&mut *self.tx).await? {
                            set.insert(row.try_get::<String, _>("digest")?);
                        }
                    }
                    None => {
                        q.execute(&mut *self.tx).await?;
                    }
                }
            }
        }
        Ok(digests
            .iter()
            .filter_map(|d| {
                let s = d.to_string();
                (!remaining.contains(&s)).then(|| (d.clone(), existed.contains(&s)))
            })
            .collect())
    }

    /// Commits. When links were removed, returns only once no replica still trusts them (a
    /// quarter of a second with PostgreSQL, see `link_cache.rs`): their files may go then.
    pub async fn commit(self) -> Result<()> {
        let committed = self.tx.commit().await;
        // Also after a failed commit: whether it landed is not always known, and forgetting
        // costs only a query.
        if self.removed_links
            && let Some(c) = &self.links
        {
            c.unlinked_and_expired().await;
        }
        committed?;
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}
