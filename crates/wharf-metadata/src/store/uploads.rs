//! Upload sessions.

use sqlx::Row;
use wharf_oci::RepoName;

use super::{MetadataStore, now, parse_repo};
use crate::Result;

impl MetadataStore {
    /// Records a new upload session for `repo`, stamped now.
    pub async fn create_upload(&self, id: &str, repo: &RepoName) -> Result<()> {
        sqlx::query("INSERT INTO uploads (id, repo, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(repo.as_str())
            .bind(now())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The repository of the upload session, if it exists.
    pub async fn upload_repo(&self, id: &str) -> Result<Option<RepoName>> {
        let row =
            sqlx::query("SELECT repo FROM uploads WHERE id = $1").bind(id).fetch_optional(&self.read).await?;
        row.map(|r| parse_repo(&r.try_get::<String, _>("repo")?)).transpose()
    }

    /// Forgets the upload session (no error if it is unknown).
    pub async fn delete_upload(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE id = $1").bind(id).execute(&self.write).await?;
        Ok(())
    }

    /// Ids of upload sessions created strictly before `unix_secs`, oldest first.
    pub async fn uploads_older_than(&self, unix_secs: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM uploads WHERE created_at < $1 ORDER BY created_at, id")
            .bind(unix_secs)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>("id")?)).collect()
    }
}
