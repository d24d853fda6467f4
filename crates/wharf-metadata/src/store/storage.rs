//! Storage figures for the registry-wide storage report. Each figure is one aggregate query
//! over every repository (never one query per repository or per blob), and all of them run
//! in one read-only transaction, so that they agree with each other under concurrent pushes.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use futures_util::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use wharf_oci::{Digest, RepoName, media_types};

use super::{Backend, MetadataStore, parse_digest, parse_repo, placeholders, row_size};
use crate::Result;

/// Repositories named in one `IN (...)` list: within the 999 parameters of old SQLite builds.
const REPO_LIST_MAX: usize = 900;

/// What one repository holds, as the metadata counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoStorage {
    pub repo: RepoName,
    /// Manifests of every kind: images, indexes, signatures and other artifacts.
    pub manifests: u64,
    pub tags: u64,
    /// Manifests stored as an OCI image index or a Docker manifest list.
    pub indexes: u64,
    /// Bytes of those index manifests themselves.
    pub index_bytes: u64,
    /// Blobs linked to the repository (readable in it), and their bytes.
    pub linked_blobs: u64,
    pub linked_blob_bytes: u64,
}

impl RepoStorage {
    fn new(repo: RepoName) -> RepoStorage {
        RepoStorage {
            repo,
            manifests: 0,
            tags: 0,
            indexes: 0,
            index_bytes: 0,
            linked_blobs: 0,
            linked_blob_bytes: 0,
        }
    }
}

/// The children of one index, summed: what its presence report's totals are computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexChildrenBytes {
    pub repo: RepoName,
    pub index: Digest,
    pub present_children: u64,
    /// Over the present children: each child manifest's size (from the index's descriptor)
    /// plus the bytes of its config and layers.
    pub present_bytes: u64,
    /// Manifest sizes (from the index's descriptors) of the absent children.
    pub absent_sizes: Vec<u64>,
}

/// A number of blobs and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobTotals {
    pub blobs: u64,
    pub bytes: u64,
}

/// Everything the storage report needs, read in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageFigures {
    /// The included repositories having any manifest or blob link, sorted bytewise.
    pub repos: Vec<RepoStorage>,
    /// Every index of those repositories that lists at least one child, sorted by repository
    /// then index digest.
    pub indexes: Vec<IndexChildrenBytes>,
    /// Distinct blobs linked to at least one of those repositories: a blob several of them
    /// share counts once, as it is stored once.
    pub unique_blobs: BlobTotals,
    /// Blobs that no repository links (what garbage collection will look at). `None` when a
    /// repository was left out: such blobs belong to no repository the caller may see.
    pub unlinked_blobs: Option<BlobTotals>,
    /// True when `include` left out at least one repository.
    pub filtered: bool,
}

/// Children of every index with their presence and, for present ones, the bytes of their
/// config and layers. Ordered so that the rows of one index are adjacent.
const CHILDREN_SQL: &str = "SELECT c.repo, c.index_digest, c.size, \
     CAST(CASE WHEN m.digest IS NULL THEN 0 ELSE 1 END AS BIGINT) AS present, \
     CAST(CASE WHEN m.digest IS NULL THEN 0 ELSE COALESCE((SELECT SUM(mb.size) FROM manifest_blobs mb \
         WHERE mb.repo = c.repo AND mb.manifest_digest = c.child_digest), 0) END AS BIGINT) AS blob_bytes \
     FROM index_children c LEFT JOIN manifests m ON m.repo = c.repo AND m.digest = c.child_digest \
     ORDER BY c.repo, c.index_digest";

fn totals(row: &AnyRow) -> Result<BlobTotals> {
    Ok(BlobTotals { blobs: row_size(row, "n")?, bytes: row_size(row, "bytes")? })
}

fn repo_entry(map: &mut BTreeMap<String, RepoStorage>, name: String) -> Result<&mut RepoStorage> {
    Ok(match map.entry(name) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let repo = parse_repo(e.key())?;
            e.insert(RepoStorage::new(repo))
        }
    })
}

impl MetadataStore {
    /// The storage figures of every repository for which `include` is true (the caller's
    /// permissions, typically), and the registry's blob totals over them.
    pub async fn storage_figures(
        &self,
        include: impl Fn(&RepoName) -> bool + Send + Sync,
    ) -> Result<StorageFigures> {
        self.storage_figures_batched(include, REPO_LIST_MAX).await
    }

    async fn storage_figures_batched(
        &self,
        include: impl Fn(&RepoName) -> bool + Send + Sync,
        repo_list_max: usize,
    ) -> Result<StorageFigures> {
        let mut tx = self.read.begin().await?;
        if self.backend == Backend::Postgres {
            // One snapshot for every query (SQLite's read transaction is one already).
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let mut by_repo: BTreeMap<String, RepoStorage> = BTreeMap::new();

        let rows = sqlx::query(
            "SELECT repo, CAST(COUNT(*) AS BIGINT) AS manifests, \
             CAST(SUM(CASE WHEN media_type IN ($1, $2) THEN 1 ELSE 0 END) AS BIGINT) AS indexes, \
             CAST(SUM(CASE WHEN media_type IN ($1, $2) THEN size ELSE 0 END) AS BIGINT) AS index_bytes \
             FROM manifests GROUP BY repo",
        )
        .bind(media_types::OCI_INDEX)
        .bind(media_types::DOCKER_MANIFEST_LIST)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let r = repo_entry(&mut by_repo, row.try_get("repo")?)?;
            r.manifests = row_size(row, "manifests")?;
            r.indexes = row_size(row, "indexes")?;
            r.index_bytes = row_size(row, "index_bytes")?;
        }

        let rows = sqlx::query("SELECT repo, CAST(COUNT(*) AS BIGINT) AS n FROM tags GROUP BY repo")
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            repo_entry(&mut by_repo, row.try_get("repo")?)?.tags = row_size(row, "n")?;
        }

        let rows = sqlx::query(
            "SELECT l.repo, CAST(COUNT(*) AS BIGINT) AS n, CAST(SUM(b.size) AS BIGINT) AS bytes \
             FROM blob_links l JOIN blobs b ON b.digest = l.digest GROUP BY l.repo",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let r = repo_entry(&mut by_repo, row.try_get("repo")?)?;
            r.linked_blobs = row_size(row, "n")?;
            r.linked_blob_bytes = row_size(row, "bytes")?;
        }

        let total = by_repo.len();
        let repos: Vec<RepoStorage> = by_repo.into_values().filter(|r| include(&r.repo)).collect();
        let filtered = repos.len() < total;
        let names: Vec<&str> = repos.iter().map(|r| r.repo.as_str()).collect();

        let indexes = index_children_bytes(&mut tx, &names.iter().copied().collect()).await?;

        let unique_blobs = if filtered {
            linked_blob_totals(&mut tx, &names, repo_list_max).await?
        } else {
            let row = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(b.size), 0) AS BIGINT) AS bytes \
                 FROM blobs b WHERE EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest)",
            )
            .fetch_one(&mut *tx)
            .await?;
            totals(&row)?
        };
        let unlinked_blobs = if filtered {
            None
        } else {
            let row = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(b.size), 0) AS BIGINT) AS bytes \
                 FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM blob_links l WHERE l.digest = b.digest)",
            )
            .fetch_one(&mut *tx)
            .await?;
            Some(totals(&row)?)
        };
        tx.commit().await?;
        Ok(StorageFigures { repos, indexes, unique_blobs, unlinked_blobs, filtered })
    }
}

/// The children of every index of the `included` repositories, summed per index. One query,
/// streamed: memory holds the sums, not the rows.
async fn index_children_bytes(
    tx: &mut Transaction<'static, Any>,
    included: &HashSet<&str>,
) -> Result<Vec<IndexChildrenBytes>> {
    let mut out = Vec::new();
    // The (repository, index digest) being summed, as read.
    let mut current: Option<(String, String, IndexChildrenBytes)> = None;
    let mut rows = sqlx::query(CHILDREN_SQL).fetch(&mut **tx);
    while let Some(row) = rows.try_next().await? {
        let repo: String = row.try_get("repo")?;
        if !included.contains(repo.as_str()) {
            continue;
        }
        let index: String = row.try_get("index_digest")?;
        let same = current.as_ref().is_some_and(|(r, i, _)| *r == repo && *i == index);
        if !same {
            let next = IndexChildrenBytes {
                repo: parse_repo(&repo)?,
                index: parse_digest(&index)?,
                present_children: 0,
                present_bytes: 0,
                absent_sizes: Vec::new(),
            };
            if let Some((_, _, done)) = current.replace((repo, index, next)) {
                out.push(done);
            }
        }
        let Some((_, _, sums)) = current.as_mut() else { continue };
        let size = row_size(&row, "size")?;
        if row.try_get::<i64, _>("present")? != 0 {
            sums.present_children += 1;
            sums.present_bytes += size + row_size(&row, "blob_bytes")?;
        } else {
            sums.absent_sizes.push(size);
        }
    }
    out.extend(current.map(|(_, _, done)| done));
    Ok(out)
}

/// Distinct blobs linked to any of `repos`. One aggregate query when the list fits in one
/// `IN (...)`; else the distinct digests batch by batch, deduplicated here.
async fn linked_blob_totals(
    tx: &mut Transaction<'static, Any>,
    repos: &[&str],
    repo_list_max: usize,
) -> Result<BlobTotals> {
    if repos.is_empty() {
        return Ok(BlobTotals::default());
    }
    if repos.len() <= repo_list_max {
        let sql = format!(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(b.size), 0) AS BIGINT) AS bytes \
             FROM blobs b WHERE EXISTS (SELECT 1 FROM blob_links l \
                 WHERE l.digest = b.digest AND l.repo IN ({}))",
            placeholders(1, repos.len())
        );
        let mut q = sqlx::query(&sql);
        for r in repos {
            q = q.bind(*r);
        }
        return totals(&q.fetch_one(&mut **tx).await?);
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut sum = BlobTotals::default();
    for chunk in repos.chunks(repo_list_max) {
        let sql = format!(
            "SELECT DISTINCT b.digest, b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest \
             WHERE l.repo IN ({})",
            placeholders(1, chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q.bind(*r);
        }
        let mut rows = q.fetch(&mut **tx);
        while let Some(row) = rows.try_next().await? {
            if seen.insert(row.try_get("digest")?) {
                sum.blobs += 1;
                sum.bytes += row_size(&row, "size")?;
            }
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn blob_totals_count_shared_blobs_once_whatever_the_batches() {
        let s = MetadataStore::connect("sqlite::memory:").await.unwrap();
        let (a, b, c, d) = (
            Digest::sha256_of(b"a"),
            Digest::sha256_of(b"b"),
            Digest::sha256_of(b"c"),
            Digest::sha256_of(b"d"),
        );
        s.link_blob(&repo("r1"), &a, 10).await.unwrap();
        s.link_blob(&repo("r1"), &b, 20).await.unwrap();
        s.link_blob(&repo("r2"), &b, 20).await.unwrap();
        s.link_blob(&repo("r2"), &c, 30).await.unwrap();
        s.link_blob(&repo("r3"), &d, 40).await.unwrap();

        let all = s.storage_figures(|_| true).await.unwrap();
        assert!(!all.filtered);
        let names: Vec<&str> = all.repos.iter().map(|r| r.repo.as_str()).collect();
        assert_eq!(names, ["r1", "r2", "r3"]);
        assert_eq!((all.repos[1].linked_blobs, all.repos[1].linked_blob_bytes), (2, 50));
        assert_eq!(all.unique_blobs, BlobTotals { blobs: 4, bytes: 100 });
        assert_eq!(all.unlinked_blobs, Some(BlobTotals::default()));

        let not_r3 = |r: &RepoName| r.as_str() != "r3";
        for batch in [1, 2, REPO_LIST_MAX] {
            let some = s.storage_figures_batched(not_r3, batch).await.unwrap();
            assert!(some.filtered);
            assert_eq!(some.repos.len(), 2);
            assert_eq!(some.unique_blobs, BlobTotals { blobs: 3, bytes: 60 }, "batch {batch}");
            assert_eq!(some.unlinked_blobs, None);
        }

        // An unlinked blob stays on disk until garbage collection: counted apart.
        s.unlink_blob(&repo("r3"), &d).await.unwrap();
        let all = s.storage_figures(|_| true).await.unwrap();
        assert_eq!(all.repos.len(), 2);
        assert_eq!(all.unique_blobs, BlobTotals { blobs: 3, bytes: 60 });
        assert_eq!(all.unlinked_blobs, Some(BlobTotals { blobs: 1, bytes: 40 }));
    }
}
