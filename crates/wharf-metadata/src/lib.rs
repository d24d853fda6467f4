//! The registry's metadata store: repositories, tags, manifests, index children, blob links,
//! referrers and upload sessions.
//!
//! One code path serves SQLite (the embedded default) and PostgreSQL (several `wharf serve`
//! replicas sharing one database): every query goes through [`sqlx::any`] with `$1, $2`
//! placeholders. Only the DDL differs between the backends (`BLOB` vs `BYTEA`, `COLLATE "C"` on
//! PostgreSQL so that text sorts bytewise as it does on SQLite); it lives in versioned SQL files
//! under `migrations/`, embedded in the binary and applied at [`MetadataStore::connect`].
//!
//! Presence of an index's children is never stored: [`MetadataStore::index_children`] derives it
//! with a join against the manifests of the repository at query time, so a child becomes present
//! whenever its manifest is put, before or after the index, and absent again when it is deleted.

pub mod freshness;
mod migrate;
mod store;

pub use store::MetadataStore;
pub use store::{
    BlobLink, BlobTotals, GcTransaction, IndexChildrenBytes, NamedLock, RepoStorage, RepoSummary,
    StorageFigures, TagSummary, UnlinkedReference,
};

use wharf_oci::{Digest, RepoName, Tag};

/// Errors of the metadata store.
#[derive(thiserror::Error, Debug)]
pub enum MetadataError {
    #[error("metadata database: {0}")]
    Db(sqlx::Error),
    /// The database cannot be reached (down, restarting, pool exhausted); retrying may work.
    #[error("metadata database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("metadata database holds invalid data: {0}")]
    Corrupt(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://...")]
    BadUrl(String),
}

impl From<sqlx::Error> for MetadataError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => MetadataError::Unavailable(e),
            // PostgreSQL shutting down or restarting (class 57: operator intervention).
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| c.starts_with("57")) => {
                MetadataError::Unavailable(e)
            }
            e => MetadataError::Db(e),
        }
    }
}

impl MetadataError {
    /// The database cannot write because its disk is full: SQLite's `SQLITE_FULL` (13) or an
    /// I/O error saying so, PostgreSQL's `disk_full` (53100).
    pub fn is_storage_full(&self) -> bool {
        match self {
            MetadataError::Db(sqlx::Error::Database(db))
            | MetadataError::Unavailable(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("13" | "53100"))
            }
            MetadataError::Db(sqlx::Error::Io(e)) | MetadataError::Unavailable(sqlx::Error::Io(e)) => {
                e.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, MetadataError>;

/// One descriptor listed by an index (image index or Docker manifest list), as recorded when the
/// index is put. Recorded whether or not the child manifest is in the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildRecord {
    /// Position of the descriptor in the index's `manifests` array.
    pub position: u32,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// Normalised `os/arch[/variant]`, if the descriptor has a platform.
    pub platform: Option<String>,
    /// The raw platform object as JSON.
    pub platform_json: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
}

/// A manifest to put, with everything derived from parsing it.
#[derive(Clone, Copy, Debug)]
pub struct NewManifest<'a> {
    pub repo: &'a RepoName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    /// The exact bytes received; stored and served unchanged.
    pub content: &'a [u8],
    pub subject: Option<&'a Digest>,
    pub artifact_type: Option<&'a str>,
    pub annotations_json: Option<&'a str>,
    /// Config and layers, with their sizes. These blobs are linked to the repository too.
    pub blob_refs: &'a [(Digest, u64)],
    /// For an index: its children. Empty for an image manifest.
    pub children: &'a [ChildRecord],
    /// Tag to point at this manifest, in the same transaction.
    pub tag: Option<&'a Tag>,
}

/// What a [`MetadataStore::put_manifest_with_events`] changed that a reader may remember.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestPut {
    /// The tag pointed at another manifest before (or may have: a concurrent push moved it
    /// between our looks), so whoever remembers the old target must be waited out.
    pub tag_moved: bool,
}

/// A manifest as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A manifest whose `subject` is a given manifest (OCI referrers API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
}

/// A child of an index with its presence in the repository, derived at query time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildPresence {
    pub position: u32,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub platform: Option<String>,
    pub platform_json: Option<String>,
    pub artifact_type: Option<String>,
    pub annotations_json: Option<String>,
    /// A manifest with this digest exists in the repository.
    pub present: bool,
}

/// An event to queue for one webhook (see [`MetadataStore::put_manifest_with_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The webhook it goes to (its URL).
    pub target: String,
    /// `push`, `delete` or `mirror_run`.
    pub kind: String,
    /// The event, as JSON, delivered inside the notification envelope.
    pub body: String,
}

/// A queued event claimed for delivery by [`MetadataStore::claim_events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEvent {
    pub id: i64,
    pub target: String,
    pub kind: String,
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
    pub created_at_ms: i64,
    /// Until when this claim holds the event (it also tells this claim from a later one).
    pub lease_until_ms: i64,
}
