//! [`MetadataStore`]: the struct, connection handling and the conversions shared by the queries.
//! The queries themselves live in the submodules, one concern each, every one in its own
//! `impl MetadataStore` block.

mod blobs;
mod browse;
mod catalog;
mod gc;
mod link_cache;
mod locks;
mod manifests;
mod outbox;
mod storage;
mod uploads;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, ConnectOptions, Connection, Executor, Row, Transaction};
use wharf_oci::{Digest, RepoName};

use crate::{MetadataError, Result, migrate};
use link_cache::LinkCache;

pub use browse::{RepoSummary, TagSummary};
pub use gc::{BlobLink, GcTransaction, UnlinkedReference};
pub use locks::NamedLock;
pub use storage::{BlobTotals, IndexChildrenBytes, RepoStorage, StorageFigures};

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
    /// Blob links remembered for pulls (on PostgreSQL as leases; see `link_cache.rs`).
    links: Option<Arc<LinkCache>>,
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

/// `$first, $first+1, ...`: `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
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
            let this = Self::finish(pool.clone(), pool, Backend::Sqlite, None).await?;
            return Ok(Self { links: Some(Arc::new(LinkCache::new(None))), ..this });
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
        Ok(Self { read, links: Some(Arc::new(LinkCache::new(Some(Path::new(path))))), ..this })
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
        let pool = Self::schema_pool(base_url, &schema).await?;
        Self::finish(pool.clone(), pool, Backend::Postgres, Some(schema)).await
    }

    /// A second store over an existing schema (one made by
    /// [`MetadataStore::connect_postgres_isolated`]): what another replica of the registry
    /// would see. Dropping the schema stays the first store's job.
    pub async fn connect_postgres_schema(base_url: &str, schema: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        if !schema.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(MetadataError::BadUrl(format!("schema {schema:?}")));
        }
        let pool = Self::schema_pool(base_url, schema).await?;
        Self::finish(pool.clone(), pool, Backend::Postgres, None).await
    }

    async fn schema_pool(base_url: &str, schema: &str) -> Result<AnyPool> {
        let set_path = format!("SET search_path TO {schema}");
        Ok(AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(set_path.as_str()).await?;
                    Ok(())
                })
            })
            .connect(base_url)
            .await?)
    }

    async fn finish(
        read: AnyPool,
        write: AnyPool,
        backend: Backend,
        isolated_schema: Option<String>,
    ) -> Result<Self> {
        let links = match backend {
            // SQLite's caller sets the cache of its file (`connect_sqlite`).
            Backend::Sqlite => None,
            Backend::Postgres => Some(Arc::new(LinkCache::for_replicas())),
        };
        let this = Self { read, write, backend, isolated_schema, links };
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

    /// How long a process may trust what it remembers of this database without asking again,
    /// counted from *before* the read; `None`: until it changes it itself (SQLite, where this
    /// process is the only writer of manifests and tags). On PostgreSQL other replicas write
    /// too, so a memory is a lease, shorter than [`MetadataStore::removal_wait`].
    pub fn replica_lease(&self) -> Option<Duration> {
        match self.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(crate::freshness::LEASE_TRUSTED),
        }
    }

    /// How long whoever removed or changed something that a replica may remember (a blob
    /// link, a manifest, where a tag points) waits after its commit before it answers: until
    /// no replica's lease on the old state is left. Zero on SQLite.
    pub fn removal_wait(&self) -> Duration {
        match self.backend {
            Backend::Sqlite => Duration::ZERO,
            Backend::Postgres => crate::freshness::LEASE,
        }
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
