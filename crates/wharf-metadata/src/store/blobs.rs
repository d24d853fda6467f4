//! Blobs and their links to repositories.

use sqlx::{Any, Row, Transaction};
use wharf_oci::{Digest, RepoName};

use super::{MetadataStore, db_size, now, parse_repo, row_size};
use crate::Result;

impl MetadataStore {
    /// Records the blob (if new) and links it to `repo` (if not yet linked).
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let mut tx = self.begin().await?;
        link_blob_in(&mut tx, repo.as_str(), &digest.to_string(), db_size(size)?, now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The blob's size, only if the blob is linked to `repo`. The pull hot path: for a while
    /// answered from memory once read (see `link_cache.rs`).
    pub async fn linked_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let miss = match self.links.as_ref().map(|c| c.lookup(repo, digest)) {
            Some(Ok(size)) => return Ok(Some(size)),
            Some(Err(miss)) => Some(miss),
            None => None,
        };
        let row = sqlx::query(
            "SELECT b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest \
             WHERE l.repo = $1 AND l.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.read)
        .await?;
        let size = row.map(|r| row_size(&r, "size")).transpose()?;
        if let (Some(c), Some(miss), Some(size)) = (&self.links, miss, size) {
            c.fill(miss, repo, digest, size);
        }
        Ok(size)
    }

    /// The blob's size if the registry knows it in any repository.
    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query("SELECT size FROM blobs WHERE digest = $1")
            .bind(digest.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| row_size(&r, "size")).transpose()
    }

    /// Repositories the blob is linked to, sorted (for mount without `from`).
    pub async fn repos_with_blob(&self, digest: &Digest) -> Result<Vec<RepoName>> {
        let rows = sqlx::query("SELECT repo FROM blob_links WHERE digest = $1 ORDER BY repo")
            .bind(digest.to_string())
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| parse_repo(&r.try_get::<String, _>("repo")?)).collect()
    }

    /// Removes the link between the blob and `repo`. The blob row stays (garbage collection
    /// removes it). True if there was a link. With PostgreSQL it returns a quarter of a second
    /// after the commit, once no replica still trusts the link (see `link_cache.rs`).
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let done = sqlx::query("DELETE FROM blob_links WHERE repo = $1 AND digest = $2")
            .bind(repo.as_str())
            .bind(digest.to_string())
            .execute(&self.write)
            .await?;
        let removed = done.rows_affected() > 0;
        if removed && let Some(c) = &self.links {
            c.unlinked_and_expired().await;
        }
        Ok(removed)
    }
}

/// Record the blob and link it to the repository. Linking again refreshes the link's time, so
/// garbage collection's grace period restarts when content is pushed or mounted again.
pub(super) async fn link_blob_in(
    tx: &mut Transaction<'static, Any>,
    repo: &str,
    digest: &str,
    size: i64,
    ts: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (digest) DO NOTHING",
    )
    .bind(digest)
    .bind(size)
    .bind(ts)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO blob_links (repo, digest, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repo, digest) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(repo)
    .bind(digest)
    .bind(ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
