//! [`MetadataStore`]: connection handling and every query, shared by both backends.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Row, Transaction};
use wharf_oci::{Digest, RepoName, Tag};

use crate::{ChildPresence, MetadataError, NewManifest, Referrer, Result, StoredManifest, migrate};

/// Connections of the SQLite read pool: twice the cores, within these bounds. Readers never
/// block each other or the writer in WAL mode; each sqlx SQLite connection has its own worker
/// thread, so more connections than that only add context switches.
const SQLITE_READERS_MIN: u32 = 4;
const SQLITE_READERS_MAX: u32 = 16;
/// Test schemas older than this are dropped by the next isolated connect.
const STALE_TEST_SCHEMA_SECS: i64 = 6 * 3600;
/// Connections of the PostgreSQL pool (reads and writes).
const POSTGRES_CONNECTIONS: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The registry's metadata store. Cheap to clone: clones share the connection pools.
///
/// On SQLite, writes go through a pool of exactly one connection (SQLite has a single writer;
/// serialising in-process avoids `SQLITE_BUSY` entirely) and reads through a pool of several
/// read-only connections, which in WAL mode never wait for the writer. On PostgreSQL both are
/// the same pool.
#[derive(Clone)]
pub struct MetadataStore {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
    /// The schema created by [`MetadataStore::connect_postgres_isolated`].
    isolated_schema: Option<String>,
}

impl std::fmt::Debug for MetadataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataStore")
            .field("backend", &self.backend.name())
            .field("isolated_schema", &self.isolated_schema)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions between the program's types and the database's.

fn db_size(size: u64) -> Result<i64> {
    i64::try_from(size).map_err(|_| MetadataError::Corrupt(format!("size {size} is out of range")))
}

fn parse_digest(s: &str) -> Result<Digest> {
    Digest::from_str(s).map_err(|e| MetadataError::Corrupt(format!("digest {s:?}: {e}")))
}

fn parse_repo(s: &str) -> Result<RepoName> {
    RepoName::from_str(s).map_err(|e| MetadataError::Corrupt(format!("repository name {s:?}: {e}")))
}

fn row_size(row: &AnyRow, col: &str) -> Result<u64> {
    let v: i64 = row.try_get(col)?;
    u64::try_from(v).map_err(|_| MetadataError::Corrupt(format!("negative {col} {v}")))
}

fn row_digest(row: &AnyRow, col: &str) -> Result<Digest> {
    let s: String = row.try_get(col)?;
    parse_digest(&s)
}

fn limit(n: Option<u32>) -> i64 {
    n.map_or(i64::MAX, i64::from)
}

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

// ---------------------------------------------------------------------------------------------
// Connecting.

/// Filesystem path of a `sqlite:` URL, or `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    (!path.is_empty() && path != ":memory:").then_some(path)
}

fn sqlite_readers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores * 2).unwrap_or(u32::MAX).clamp(SQLITE_READERS_MIN, SQLITE_READERS_MAX)
}

fn sqlite_pragmas(sql: &'static str) -> AnyPoolOptions {
    AnyPoolOptions::new().after_connect(move |conn, _meta| {
        Box::pin(async move {
            for pragma in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                conn.execute(pragma).await?;
            }
            Ok(())
        })
    })
}

impl MetadataStore {
    /// Connects to `sqlite://PATH` (the file is created if missing, with its directory) or
    /// `postgres://...` / `postgresql://...`, and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new().max_connections(POSTGRES_CONNECTIONS).connect(url).await?;
            Self::finish(pool.clone(), pool, Backend::Postgres, None).await
        } else {
            Err(MetadataError::BadUrl(url.to_owned()))
        }
    }

    async fn connect_sqlite(url: &str) -> Result<Self> {
        let Some(path) = sqlite_path(url) else {
            // In memory: every connection would open its own database, so use exactly one,
            // kept for the life of the pool.
            let pool = sqlite_pragmas("PRAGMA foreign_keys = ON")
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect(url)
                .await?;
            return Self::finish(pool.clone(), pool, Backend::Sqlite, None).await;
        };
        if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                MetadataError::Db(sqlx::Error::Configuration(
                    format!("creating directory {} for {url:?}: {e}", dir.display()).into(),
                ))
            })?;
        }
        let url = if url.contains("mode=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        // The writer: WAL (persistent in the file), and a full fsync at every commit, so that
        // what a client was told is stored survives a power cut.
        let write = sqlite_pragmas(
            "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
             PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL",
        )
        .max_connections(1)
        .connect(&url)
        .await?;
        let this = Self::finish(write.clone(), write, Backend::Sqlite, None).await?;
        let read =
            sqlite_pragmas("PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA query_only = ON")
                .max_connections(sqlite_readers())
                .connect(&url)
                .await?;
        Ok(Self { read, ..this })
    }

    /// For tests: connects to the PostgreSQL server at `base_url` and works in a fresh schema
    /// with a random name (set as `search_path` on every connection), so that parallel test runs
    /// never see each other. [`MetadataStore::drop_isolated_schema`] removes it.
    pub async fn connect_postgres_isolated(base_url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        if !(base_url.starts_with("postgres://") || base_url.starts_with("postgresql://")) {
            return Err(MetadataError::BadUrl(base_url.to_owned()));
        }
        // The creation time in the name lets later runs drop schemas that a test which panicked
        // (and so never called `drop_isolated_schema`) left behind.
        let schema = format!("wharf_test_{}_{}", now(), uuid::Uuid::new_v4().simple());
        let options = AnyConnectOptions::from_str(base_url)?;
        let mut conn = options.connect().await?;
        let stale = sqlx::query(
            "SELECT CAST(nspname AS TEXT) AS nspname FROM pg_namespace WHERE nspname LIKE 'wharf\\_test\\_%'",
        )
        .fetch_all(&mut conn)
        .await?;
        for row in stale {
            let name: String = row.try_get("nspname")?;
            let created = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok());
            if created.is_some_and(|t| now() - t > STALE_TEST_SCHEMA_SECS) {
                // Another run may be dropping it too: failing here is not this test's business.
                let _ = conn.execute(format!("DROP SCHEMA IF EXISTS {name} CASCADE").as_str()).await;
            }
        }
        conn.execute(format!("CREATE SCHEMA {schema}").as_str()).await?;
        conn.close().await?;
        let set_path = format!("SET search_path TO {schema}");
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(set_path.as_str()).await?;
                    Ok(())
                })
            })
            .connect(base_url)
            .await?;
        Self::finish(pool.clone(), pool, Backend::Postgres, Some(schema)).await
    }

    async fn finish(
        read: AnyPool,
        write: AnyPool,
        backend: Backend,
        isolated_schema: Option<String>,
    ) -> Result<Self> {
        let this = Self { read, write, backend, isolated_schema };
        let mut tx = this.begin().await?;
        let before = migrate::run(&mut tx, backend).await?;
        tx.commit().await?;
        tracing::debug!(
            backend = backend.name(),
            from = before,
            to = migrate::latest(backend),
            "metadata store ready"
        );
        Ok(this)
    }

    /// Drops the schema made by [`MetadataStore::connect_postgres_isolated`] and closes the
    /// pools. Does nothing else on a store connected otherwise.
    pub async fn drop_isolated_schema(&self) -> Result<()> {
        if let Some(schema) = &self.isolated_schema {
            sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&self.write).await?;
            self.close().await;
        }
        Ok(())
    }

    /// The schema made by [`MetadataStore::connect_postgres_isolated`], if this store uses one.
    pub fn isolated_schema(&self) -> Option<&str> {
        self.isolated_schema.as_deref()
    }

    /// Closes the connection pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend.name()
    }

    /// One round trip to the database through the read pool (for health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").fetch_one(&self.read).await?;
        Ok(())
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT CAST(MAX(version) AS BIGINT) AS v FROM wharf_schema_version")
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get::<Option<i64>, _>("v")?.unwrap_or(0))
    }

    /// A write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock at once, so that a
    /// transaction never fails half-way upgrading a read lock (another process may share the
    /// file).
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.write.begin().await?,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Blobs.

    /// Records the blob (if new) and links it to `repo` (if not yet linked).
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest, size: u64) -> Result<()> {
        let mut tx = self.begin().await?;
        link_blob_in(&mut tx, repo.as_str(), &digest.to_string(), db_size(size)?, now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The blob's size, only if the blob is linked to `repo`.
    pub async fn linked_blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest \
             WHERE l.repo = $1 AND l.digest = $2",
        )
        .bind(repo.as_str())
        .bind(digest.to_string())
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| row_size(&r, "size")).transpose()
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
    /// removes it). True if there was a link.
    pub async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let done = sqlx::query("DELETE FROM blob_links WHERE repo = $1 AND digest = $2")
            .bind(repo.as_str())
            .bind(digest.to_string())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // -----------------------------------------------------------------------------------------
    // Manifests.

    /// In one transaction: inserts the manifest if absent (same digest means same bytes), links
    /// its blobs to the repository and records them as its references, records its children if
    /// the manifest is new (they never change), then points `m.tag` at it.
    pub async fn put_manifest(&self, m: NewManifest<'_>) -> Result<()> {
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
            link_blob_in(&mut tx, repo, blob, *size, ts).await?;
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

        if let Some(tag) = m.tag {
            upsert_tag(&mut tx, repo, tag.as_str(), &digest, ts).await?;
        }
        tx.commit().await?;
        Ok(())
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
        row.map(|r| {
            Ok(StoredManifest {
                digest: row_digest(&r, "digest")?,
                media_type: r.try_get("media_type")?,
                content: r.try_get("content")?,
            })
        })
        .transpose()
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
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes the tag (not the manifest). True if it was there.
    pub async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tags WHERE repo = $1 AND tag = $2")
            .bind(repo.as_str())
            .bind(tag.as_str())
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

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

    // -----------------------------------------------------------------------------------------
    // Upload sessions.

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

/// Record the blob and link it to the repository. Linking again refreshes the link's time, so
/// garbage collection's grace period restarts when content is pushed or mounted again.
async fn link_blob_in(
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

async fn upsert_tag(
    tx: &mut Transaction<'static, Any>,
    repo: &str,
    tag: &str,
    digest: &str,
    ts: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, \
         updated_at = excluded.updated_at",
    )
    .bind(repo)
    .bind(tag)
    .bind(digest)
    .bind(ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Garbage collection and fsck.

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

/// `$first, $first+1, ...`: `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
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
        Ok(GcTransaction { tx, backend: self.backend })
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
                Ok((
                    parse_repo(&r.try_get::<String, _>("repo")?)?,
                    StoredManifest {
                        digest: row_digest(r, "digest")?,
                        media_type: r.try_get("media_type")?,
                        content: r.try_get("content")?,
                    },
                ))
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
        Ok(done.rows_affected() > 0)
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

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://data/meta.db"), Some("data/meta.db"));
        assert_eq!(sqlite_path("sqlite:///abs/meta.db?mode=rwc"), Some("/abs/meta.db"));
        assert_eq!(sqlite_path("sqlite:meta.db"), Some("meta.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("sqlite://:memory:"), None);
        assert_eq!(sqlite_path("postgres://x"), None);
    }

    #[tokio::test]
    async fn bad_url() {
        let err = MetadataStore::connect("mysql://x").await.unwrap_err();
        assert!(matches!(err, MetadataError::BadUrl(_)), "{err}");
    }

    #[tokio::test]
    async fn in_memory_works() {
        let s = MetadataStore::connect("sqlite::memory:").await.unwrap();
        let repo: RepoName = "a/b".parse().unwrap();
        let d = Digest::sha256_of(b"x");
        s.link_blob(&repo, &d, 1).await.unwrap();
        assert_eq!(s.linked_blob_size(&repo, &d).await.unwrap(), Some(1));
        assert_eq!(s.schema_version().await.unwrap(), migrate::latest(Backend::Sqlite));
    }
}
