//! Manifests, tags, referrers, and index children with their presence.

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use wharf_oci::{Digest, RepoName, Tag};

use super::blobs::link_blob_in;
use super::outbox::enqueue_in;
use super::{MetadataStore, db_size, now, row_digest, row_size};
use crate::{
    ChildPresence, ManifestPut, MetadataError, NewEvent, NewManifest, Referrer, Result, StoredManifest,
};

/// Columns selected by the children queries, with presence derived by a join.
const CHILD_COLUMNS: &str = "c.position, c.child_digest, c.media_type, c.size, c.platform, \
     c.platform_json, c.artifact_type, c.annotations, \
     CAST(CASE WHEN m.digest IS NULL THEN 0 ELSE 1 END AS BIGINT) AS present";

fn child_presence(row: &AnyRow) -> Result<ChildPresence> {
    let position: i64 = row.try_get("position")?;
    Ok(ChildPresence {
        position: u32::try_from(position)
            .map_err(|_| MetadataError::Corrupt(format!("child position {position}")))?,
        digest: row_digest(row, "child_digest")?,
        media_type: row.try_get("media_type")?,
        size: row_size(row, "size")?,
        platform: row.try_get("platform")?,
        platform_json: row.try_get("platform_json")?,
        artifact_type: row.try_get("artifact_type")?,
        annotations_json: row.try_get("annotations")?,
        present: row.try_get::<i64, _>("present")? != 0,
    })
}

impl MetadataStore {
    /// In one transaction: inserts the manifest if absent (same digest means same bytes), links
    /// its blobs to the repository and records them as its references, records its children if
    /// the manifest is new (they never change), then points `m.tag` at it.
    pub async fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
        self.put_manifest_with_events(m, &[]).await.map(|_| ())
    }

    /// [`MetadataStore::put_manifest`], queueing `events` (webhook notifications of the push) in
    /// the same transaction: a committed push always has its events, a failed one none.
    pub async fn put_manifest_with_events(
        &self,
        m: NewManifest<'_>,
        events: &[NewEvent],
    ) -> Result<ManifestPut> {
        let repo = m.repo.as_str();
        let digest = m.digest.to_string();
        let ts = now();
        // A stable order of inserts: two transactions touching the same blobs never deadlock.
        let mut refs: Vec<(String, i64)> =
            m.blob_refs.iter().map(|(d, s)| Ok((d.to_string(), db_size(*s)?))).collect::<Result<_>>()?;
        refs.sort();
        refs.dedup_by(|a, b| a.0 == b.0);

        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO manifests \
             (repo, digest, media_type, size, content, subject, artifact_type, annotations, \
              created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (repo, digest) DO NOTHING",
        )
        .bind(repo)
        .bind(digest.as_str())
        .bind(m.media_type)
        .bind(db_size(m.content.len() as u64)?)
        .bind(m.content)
        .bind(m.subject.map(|s| s.to_string()))
        .bind(m.artifact_type)
        .bind(m.annotations_json)
        .bind(ts)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;

        for (blob, size) in &refs {
            // Linking again restarts gc's grace period; the references themselves were written
            // with the manifest row and only go with it.
            link_blob_in(&mut tx, repo, blob, *size, ts).await?;
            if !inserted {
                continue;
            }
            sqlx::query(
                "INSERT INTO manifest_blobs (repo, manifest_digest, blob_digest, size) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (repo, manifest_digest, blob_digest) \
                 DO NOTHING",
            )
            .bind(repo)
            .bind(digest.as_str())
            .bind(blob.as_str())
            .bind(*size)
            .execute(&mut *tx)
            .await?;
        }

        if inserted {
            for c in m.children {
                sqlx::query(
                    "INSERT INTO index_children \
                     (repo, index_digest, position, child_digest, media_type, size, platform, \
                      platform_json, artifact_type, annotations) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (repo, index_digest, position) DO NOTHING",
                )
                .bind(repo)
                .bind(digest.as_str())
                .bind(i64::from(c.position))
                .bind(c.digest.to_string())
                .bind(c.media_type.as_str())
                .bind(db_size(c.size)?)
                .bind(c.platform.as_deref())
                .bind(c.platform_json.as_deref())
                .bind(c.artifact_type.as_deref())
                .bind(c.annotations_json.as_deref())
                .execute(&mut *tx)
                .await?;
            }
        }

        let tag_moved = match m.tag {
            Some(tag) => point_tag(&mut tx, repo, tag.as_str(), &digest, ts).await?,
            None => false,
        };
        enqueue_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(ManifestPut { tag_moved })
    }

    /// The manifest's exact bytes and media type, if it is in `repo`.
    pub async fn get_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        let row = sqlx::query("SELECT media_type, content FROM manifests WHERE repo = $1 AND digest = $2")
            .bind(repo.as_str())
            .bind(digest.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| {
            Ok(StoredManifest {
                digest: digest.clone(),
                media_type: r.try_get("media_type")?,
                content: r.try_get("content")?,
            })
        })
        .transpose()
    }

    /// The manifest the tag points at, in one query: the hot path of `GET .../manifests/TAG`
    /// (the same as [`MetadataStore::resolve_tag`] then [`MetadataStore::get_manifest`]).
    pub async fn get_tagged_manifest(&self, repo: &RepoName, tag: &Tag) -> Result<Option<StoredManifest>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content FROM tags t \
             JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
             WHERE t.repo = $1 AND t.tag = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| stored_manifest(&r)).transpose()
    }

    /// Like [`MetadataStore::get_tagged_manifest`], with when the tag was last checked against
    /// an upstream (unix seconds; `None` if never): pull-through by tag decides on it whether to
    /// ask the upstream again.
    pub async fn get_tagged_manifest_checked(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<(StoredManifest, Option<i64>)>> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.content, t.upstream_checked_at FROM tags t \
             JOIN manifests m ON m.repo = t.repo AND m.digest = t.digest \
             WHERE t.repo = $1 AND t.tag = $2",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| Ok((stored_manifest(&r)?, r.try_get::<Option<i64>, _>("upstream_checked_at")?)))
            .transpose()
    }

    /// Record that `tag` was compared with the upstream at `at` (unix seconds), if it still
    /// points at `digest` (a push in between keeps its own state). Returns whether it did.
    pub async fn mark_tag_checked(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
        at: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE tags SET upstream_checked_at = $4 WHERE repo = $1 AND tag = $2 AND digest = $3",
        )
        .bind(repo.as_str())
        .bind(tag.as_str())
        .bind(digest.to_string())
        .bind(at)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Media type and size of the manifest, if it is in `repo` (for `HEAD`).
    pub async fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<Option<(String, u64)>> {
        let row = sqlx::query("SELECT media_type, size FROM manifests WHERE repo = $1 AND digest = $2")
            .bind(repo.as_str())
            .bind(digest.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((r.try_get("media_type")?, row_size(&r, "size")?))).transpose()
    }

    /// The digest the tag points at.
    pub async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let row = sqlx::query("SELECT digest FROM tags WHERE repo = $1 AND tag = $2")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| row_digest(&r, "digest")).transpose()
    }

    /// Deletes the manifest, every tag pointing at it, its blob references and its children
    /// rows. Children rows of other indexes that list it stay: the child just becomes absent.
    /// Blob links stay too (garbage collection decides). True if the manifest was there.
    pub async fn delete_manifest(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        self.delete_manifest_with_events(repo, digest, &[]).await
    }

    /// [`MetadataStore::delete_manifest`], queueing `events` in the same transaction if the
    /// manifest was there.
    pub async fn delete_manifest_with_events(
        &self,
        repo: &RepoName,
        digest: &Digest,
        events: &[NewEvent],
    ) -> Result<bool> {
        let repo = repo.as_str();
        let digest = digest.to_string();
        let mut tx = self.begin().await?;
        for sql in [
            "DELETE FROM tags WHERE repo = $1 AND digest = $2",
            "DELETE FROM manifest_blobs WHERE repo = $1 AND manifest_digest = $2",
            "DELETE FROM index_children WHERE repo = $1 AND index_digest = $2",
        ] {
            sqlx::query(sql).bind(repo).bind(digest.as_str()).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM manifests WHERE repo = $1 AND digest = $2")
            .bind(repo)
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await?;
        let deleted = done.rows_affected() > 0;
        if deleted {
            enqueue_in(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes the tag (not the manifest). True if it was there.
    pub async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        self.delete_tag_with_events(repo, tag, &[]).await
    }

    /// [`MetadataStore::delete_tag`], queueing `events` in the same transaction if the tag was
    /// there.
    pub async fn delete_tag_with_events(
        &self,
        repo: &RepoName,
        tag: &Tag,
        events: &[NewEvent],
    ) -> Result<bool> {
        if events.is_empty() {
            let done = sqlx::query("DELETE FROM tags WHERE repo = $1 AND tag = $2")
                .bind(repo.as_str())
                .bind(tag.as_str())
                .execute(&self.write)
                .await?;
            return Ok(done.rows_affected() > 0);
        }
        let mut tx = self.begin().await?;
        let done = sqlx::query("DELETE FROM tags WHERE repo = $1 AND tag = $2")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&mut *tx)
            .await?;
        let deleted = done.rows_affected() > 0;
        if deleted {
            enqueue_in(&mut tx, events).await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Manifests in `repo` whose `subject` is `subject`, sorted by digest.
    pub async fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Referrer>> {
        let rows = sqlx::query(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests \
             WHERE repo = $1 AND subject = $2 ORDER BY digest",
        )
        .bind(repo.as_str())
        .bind(subject.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Referrer {
                    digest: row_digest(r, "digest")?,
                    media_type: r.try_get("media_type")?,
                    size: row_size(r, "size")?,
                    artifact_type: r.try_get("artifact_type")?,
                    annotations_json: r.try_get("annotations")?,
                })
            })
            .collect()
    }

    /// The children of the index, ordered by position, each with its presence in `repo`
    /// (derived by a join at query time). Empty if the index is unknown or has no children.
    pub async fn index_children(&self, repo: &RepoName, index: &Digest) -> Result<Vec<ChildPresence>> {
        let rows = sqlx::query(&format!(
            "SELECT {CHILD_COLUMNS} FROM index_children c \
             LEFT JOIN manifests m ON m.repo = c.repo AND m.digest = c.child_digest \
             WHERE c.repo = $1 AND c.index_digest = $2 ORDER BY c.position"
        ))
        .bind(repo.as_str())
        .bind(index.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(child_presence).collect()
    }

    /// Indexes in `repo` that list `child`, each with that child's record, sorted by index digest
    /// then position.
    pub async fn indexes_listing(
        &self,
        repo: &RepoName,
        child: &Digest,
    ) -> Result<Vec<(Digest, ChildPresence)>> {
        let rows = sqlx::query(&format!(
            "SELECT c.index_digest, {CHILD_COLUMNS} FROM index_children c \
             LEFT JOIN manifests m ON m.repo = c.repo AND m.digest = c.child_digest \
             WHERE c.repo = $1 AND c.child_digest = $2 ORDER BY c.index_digest, c.position"
        ))
        .bind(repo.as_str())
        .bind(child.to_string())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((row_digest(r, "index_digest")?, child_presence(r)?))).collect()
    }

    /// Bytes of the config and layers an image manifest in `repo` references (0 for an
    /// index or an unknown manifest). Feeds the presence report's storage figures.
    pub async fn manifest_blob_bytes(&self, repo: &RepoName, manifest: &Digest) -> Result<u64> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS n FROM manifest_blobs \
             WHERE repo = $1 AND manifest_digest = $2",
        )
        .bind(repo.as_str())
        .bind(manifest.to_string())
        .fetch_one(&self.read)
        .await?;
        row_size(&row, "n")
    }

    /// How many manifests of `repo` reference the blob (as config or layer).
    pub async fn manifests_referencing_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM manifest_blobs \
             WHERE repo = $1 AND blob_digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_one(&self.read)
        .await?;
        row_size(&row, "n")
    }
}

/// Points `tag` at `digest`; true if it pointed at another manifest before. Statements are
/// tried in turn until one changes a row: a push of the same tag again and a new tag stop at
/// the first or second; only a move, or a race with another push of the tag, reaches the
/// upsert (not a plain UPDATE: the tag may have been deleted since the INSERT saw it), which
/// is then reported as a move.
async fn point_tag(
    tx: &mut Transaction<'static, Any>,
    repo: &str,
    tag: &str,
    digest: &str,
    ts: i64,
) -> Result<bool> {
    const STEPS: [(&str, bool); 3] = [
        ("UPDATE tags SET updated_at = $4 WHERE repo = $1 AND tag = $2 AND digest = $3", false),
        (
            "INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repo, tag) DO NOTHING",
            false,
        ),
        (
            "INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, \
             updated_at = excluded.updated_at",
            true,
        ),
    ];
    for (sql, moved) in STEPS {
        let done = sqlx::query(sql).bind(repo).bind(tag).bind(digest).bind(ts).execute(&mut **tx).await?;
        if done.rows_affected() > 0 {
            return Ok(moved);
        }
    }
    Ok(true)
}

/// A manifest from a row with `digest`, `media_type` and `content` columns.
pub(super) fn stored_manifest(r: &AnyRow) -> Result<StoredManifest> {
    Ok(StoredManifest {
        digest: row_digest(r, "digest")?,
        media_type: r.try_get("media_type")?,
        content: r.try_get("content")?,
    })
}
