//! Discovery: tag lists, the catalog of repositories, and whether a repository exists.

use sqlx::Row;
use wharf_oci::RepoName;

use super::{MetadataStore, limit};
use crate::Result;

impl MetadataStore {
    /// Tags of `repo` sorted bytewise, strictly after `last`, at most `n`.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT tag FROM tags WHERE repo = $1 AND tag > $2 ORDER BY tag LIMIT $3")
            .bind(repo.as_str())
            .bind(last.unwrap_or(""))
            .bind(limit(n))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("tag")?)).collect()
    }

    /// True if `repo` has any manifest, tag or blob link.
    pub async fn repo_exists(&self, repo: &RepoName) -> Result<bool> {
        // Every tag points at a manifest of its repository, so manifests cover tags.
        let row = sqlx::query(
            "SELECT repo FROM manifests WHERE repo = $1 \
             UNION ALL SELECT repo FROM blob_links WHERE repo = $1 LIMIT 1",
        )
        .bind(repo.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    /// Repositories having any manifest or blob link, sorted bytewise, strictly after `last`,
    /// at most `n`.
    pub async fn catalog(&self, n: Option<u32>, last: Option<&str>) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT repo FROM (\
                 SELECT repo FROM manifests WHERE repo > $1 \
                 UNION SELECT repo FROM blob_links WHERE repo > $1) r \
             ORDER BY repo LIMIT $2",
        )
        .bind(last.unwrap_or(""))
        .bind(limit(n))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("repo")?)).collect()
    }
}
