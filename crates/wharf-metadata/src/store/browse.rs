//! Paged summaries for people browsing the registry (the web UI): repositories with their tag
//! count, stored bytes and whether any index is sparse; a repository's tags newest first with
//! their kind, size and presence counts. One query per page whatever the registry's size:
//! the per-row figures are correlated subqueries over the rows of that page only.

use sqlx::Row;
use sqlx::any::AnyRow;
use wharf_oci::{Digest, RepoName};

use super::{MetadataStore, parse_repo, row_digest, row_size};
use crate::Result;

/// One repository as the repository list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSummary {
    pub repo: RepoName,
    pub tags: u64,
    /// Bytes of its manifests and of the blobs linked to it (a blob shared with another
    /// repository counts in each).
    pub stored_bytes: u64,
    /// At least one index of the repository has an absent child.
    pub sparse: bool,
}

/// One tag as a repository's tag list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagSummary {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// When the tag was last pointed at a manifest (unix seconds).
    pub updated_at: i64,
    /// The manifest, its config and layers, and for an index its present children with
    /// theirs: what is stored here for this tag (the index report's `present_bytes`).
    pub stored_bytes: u64,
    /// Children an index lists (0 for anything else), and how many of them are here.
    pub children: u64,
    pub present_children: u64,
}

/// `%text%` for `LIKE … ESCAPE '\'` against a lower-cased column (SQLite's `LIKE` ignores
/// ASCII case, PostgreSQL's does not: lowering both sides makes them agree), the wildcards of
/// `text` taken literally.
fn contains_pattern(text: Option<&str>) -> String {
    let mut p = String::from("%");
    for c in text.unwrap_or("").to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

const REPOS_SQL: &str = "SELECT r.repo, \
     CAST((SELECT COUNT(*) FROM tags t WHERE t.repo = r.repo) AS BIGINT) AS tags, \
     CAST(COALESCE((SELECT SUM(m.size) FROM manifests m WHERE m.repo = r.repo), 0) \
        + COALESCE((SELECT SUM(b.size) FROM blob_links l JOIN blobs b ON b.digest = l.digest \
                    WHERE l.repo = r.repo), 0) AS BIGINT) AS bytes, \
     CAST(CASE WHEN EXISTS (SELECT 1 FROM index_children c LEFT JOIN manifests cm \
            ON cm.repo = c.repo AND cm.digest = c.child_digest \
            WHERE c.repo = r.repo AND cm.digest IS NULL) THEN 1 ELSE 0 END AS BIGINT) AS sparse \
     FROM (SELECT repo FROM manifests WHERE repo > $1 \
           UNION SELECT repo FROM blob_links WHERE repo > $1) r \
     WHERE r.repo LIKE $2 ESCAPE '\\' ORDER BY r.repo LIMIT $3";

/// Present children of the tagged index `t.digest`, joined to their manifests.
const PRESENT_CHILDREN: &str = "FROM index_children c JOIN manifests cm \
     ON cm.repo = c.repo AND cm.digest = c.child_digest \
     WHERE c.repo = t.repo AND c.index_digest = t.digest";

fn tags_sql() -> String {
    format!(
        "SELECT t.tag, t.digest, t.updated_at, m.media_type, m.artifact_type, \
         CAST(m.size \
            + COALESCE((SELECT SUM(mb.size) FROM manifest_blobs mb \
                        WHERE mb.repo = t.repo AND mb.manifest_digest = t.digest), 0) \
            + COALESCE((SELECT SUM(c.size) {PRESENT_CHILDREN}), 0) \
            + COALESCE((SELECT SUM(mb.size) FROM index_children c JOIN manifest_blobs mb \
                        ON mb.repo = c.repo AND mb.manifest_digest = c.child_digest \
                        WHERE c.repo = t.repo AND c.index_digest = t.digest), 0) AS BIGINT) AS bytes, \
         CAST((SELECT COUNT(*) FROM index_children c \
               WHERE c.repo = t.repo AND c.index_digest = t.digest) AS BIGINT) AS children, \
         CAST((SELECT COUNT(*) {PRESENT_CHILDREN}) AS BIGINT) AS present \
         FROM tags t JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
         WHERE t.repo = $1 AND LOWER(t.tag) LIKE $2 ESCAPE '\\' \
         ORDER BY t.updated_at DESC, t.tag DESC LIMIT $3 OFFSET $4"
    )
}

fn tag_summary(row: &AnyRow) -> Result<TagSummary> {
    Ok(TagSummary {
        tag: row.try_get("tag")?,
        digest: row_digest(row, "digest")?,
        media_type: row.try_get("media_type")?,
        artifact_type: row.try_get("artifact_type")?,
        updated_at: row.try_get("updated_at")?,
        stored_bytes: row_size(row, "bytes")?,
        children: row_size(row, "children")?,
        present_children: row_size(row, "present")?,
    })
}

impl MetadataStore {
    /// Repositories (having any manifest or blob link) whose name contains `search`, sorted
    /// bytewise, strictly after `after`, at most `n`, with their figures.
    pub async fn repo_summaries(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        n: u32,
    ) -> Result<Vec<RepoSummary>> {
        let rows = sqlx::query(REPOS_SQL)
            .bind(after.unwrap_or(""))
            .bind(contains_pattern(search))
            .bind(i64::from(n))
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(RepoSummary {
                    repo: parse_repo(&row.try_get::<String, _>("repo")?)?,
                    tags: row_size(row, "tags")?,
                    stored_bytes: row_size(row, "bytes")?,
                    sparse: row.try_get::<i64, _>("sparse")? != 0,
                })
            })
            .collect()
    }

    /// Tags of `repo` containing `search`, newest first (ties by name, descending), skipping `offset`,
    /// at most `n`, with their manifest's kind and figures.
    pub async fn tag_summaries(
        &self,
        repo: &RepoName,
        search: Option<&str>,
        offset: u64,
        n: u32,
    ) -> Result<Vec<TagSummary>> {
        let rows = sqlx::query(&tags_sql())
            .bind(repo.as_str())
            .bind(contains_pattern(search))
            .bind(i64::from(n))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(tag_summary).collect()
    }

    /// How many tags of `repo` contain `search`.
    pub async fn tag_count(&self, repo: &RepoName, search: Option<&str>) -> Result<u64> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM tags WHERE repo = $1 AND LOWER(tag) LIKE $2 ESCAPE '\\'",
        )
        .bind(repo.as_str())
        .bind(contains_pattern(search))
        .fetch_one(&self.read)
        .await?;
        row_size(&row, "n")
    }

    /// Which of `tags` exist in `repo`, with their digests (to find cosign's
    /// `sha256-<hex>.sig` tags of some manifests in one query).
    pub async fn tags_among(&self, repo: &RepoName, tags: &[String]) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        // Within the parameter limit of old SQLite builds.
        for chunk in tags.chunks(500) {
            let sql = format!(
                "SELECT tag, digest FROM tags WHERE repo = $1 AND tag IN ({}) ORDER BY tag",
                super::placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(repo.as_str());
            for t in chunk {
                q = q.bind(t.as_str());
            }
            for row in q.fetch_all(&self.read).await? {
                out.push((row.try_get("tag")?, row_digest(&row, "digest")?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_patterns_take_wildcards_literally() {
        assert_eq!(contains_pattern(None), "%%");
        assert_eq!(contains_pattern(Some("A_b%c\\")), "%a\\_b\\%c\\\\%");
    }
}
