//! Content-addressed blob store and resumable upload sessions, on the filesystem (the default)
//! or in an S3-compatible bucket (`s3.rs`), behind one [`BlobStore`].
//!
//! Filesystem layout under the root directory:
//!
//! ```text
//! blobs/<algorithm>/<first two hex>/<hex>   committed, verified blobs
//! uploads/<uuid>/data                       resumable upload sessions
//! tmp/<uuid>                                monolithic uploads in flight
//! ```
//!
//! Everything is written to a file on the same filesystem first, hashed while it streams in,
//! fsynced, and only then renamed into `blobs/`: a blob is visible only once it is durable and
//! verified. Memory use does not depend on blob size: bodies are written in batches of at most
//! [`WRITE_BATCH`] bytes with one batch in flight on the blocking pool while the next is hashed.

mod blob_store;
mod fs;
mod read;
mod s3;
mod small;
mod spool;
mod store;
mod trash;
mod upload;

use std::fmt;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use wharf_oci::Digest;

pub use blob_store::BlobStore;
pub use s3::S3Config;

/// Incoming bytes are coalesced into writes of this size (larger chunks are written as they are).
pub const WRITE_BATCH: usize = 1 << 20;
/// Chunk size of the streams returned by [`BlobStore::read`].
pub const READ_CHUNK: usize = 1 << 20;
/// Chunks a download reads ahead of the socket: disk reads and network writes overlap, and
/// memory per download stays bounded (`READ_AHEAD * READ_CHUNK`).
const READ_AHEAD: usize = 4;
/// Buffer used when re-hashing stored content from disk.
const HASH_BUF: usize = 1 << 20;
/// Temporary files older than this are removed when a store is opened (left over by a crash).
const TMP_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(thiserror::Error, Debug)]
pub enum StorageError {
    #[error("upload {0} is not known")]
    UploadUnknown(String),
    #[error("upload is at offset {actual}, but the chunk starts at {expected}")]
    OffsetMismatch { expected: u64, actual: u64 },
    #[error("content hashes to {actual}, not to the digest {expected} that was given")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload holds {actual} bytes, but {expected} were declared")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The incoming stream failed (for example, the client went away).
    #[error("upload body: {0}")]
    Body(String),
    /// The object store cannot be reached or refused the request; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl StorageError {
    /// The filesystem under the store is full (ENOSPC, or EDQUOT where a quota applies).
    pub fn is_storage_full(&self) -> bool {
        match self {
            StorageError::Io(e) => {
                matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}

/// A stored blob's size and when it was written or last touched (garbage collection's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobAge {
    pub size: u64,
    pub modified: SystemTime,
}

/// A stream of body bytes, incoming (uploads) or outgoing (reads).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// An open blob, possibly restricted to a byte range.
pub struct BlobRead {
    /// Size of the whole blob.
    pub size: u64,
    /// Offset of the first byte of `body` within the blob.
    pub start: u64,
    /// Number of bytes `body` yields.
    pub len: u64,
    pub body: BodyStream,
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("start", &self.start)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}
