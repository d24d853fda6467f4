//! [`BlobStore`]: the one interface the registry uses, over the filesystem or an S3 bucket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use wharf_oci::Digest;

use futures_util::TryStreamExt;

use crate::s3::{S3Config, S3Store};
use crate::small::{SMALL_BLOB, SmallBlobs, read_bytes};
use crate::store::FsStore;
use crate::{BlobAge, BlobRead, BodyStream, StorageError};

/// Content-addressed blobs and resumable upload sessions. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct BlobStore {
    backend: Backend,
    /// Small blobs served from memory once read (`small.rs`).
    small: Arc<SmallBlobs>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("backend", &self.backend).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
enum Backend {
    Fs(FsStore),
    S3(Arc<S3Store>),
}

/// Calls the same method on whichever backend this store is.
macro_rules! each {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Fs(s) => s.$method($($arg),*).await,
            Backend::S3(s) => s.$method($($arg),*).await,
        }
    };
}

impl BlobStore {
    /// Opens (creating if needed) a filesystem store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        Ok(BlobStore::with(Backend::Fs(FsStore::open(root).await?)))
    }

    /// Connects to an S3-compatible bucket; fails (naming endpoint and bucket) when it is
    /// unreachable, missing, or the credentials are refused.
    pub async fn open_s3(config: S3Config) -> Result<Self, StorageError> {
        Ok(BlobStore::with(Backend::S3(Arc::new(S3Store::open(config).await?))))
    }

    fn with(backend: Backend) -> Self {
        BlobStore { backend, small: Arc::default() }
    }

    /// Where the blobs are, for logs and errors.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Fs(s) => format!("files under {}", s.root().display()),
            Backend::S3(s) => s.describe().to_owned(),
        }
    }

    /// The directory of a filesystem store; `None` on S3.
    pub fn root(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Fs(s) => Some(s.root()),
            Backend::S3(_) => None,
        }
    }

    /// Whether the store answers (for health checks): the object store is reachable, the
    /// filesystem root is there.
    pub async fn check(&self) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Fs(s) => Ok(tokio::fs::metadata(s.root()).await.map(|_| ())?),
            Backend::S3(s) => s.check().await,
        }
    }

    /// Size of the blob, if it is present.
    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        each!(self.stat(d))
    }

    /// Size of a stored blob, marking it as just used (garbage collection's grace period counts
    /// from then): for a mount, which links existing content. `Ok(None)` if absent.
    pub async fn touch(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        each!(self.touch(d))
    }

    /// Size and the time the blob was written or last touched.
    pub async fn blob_age(&self, d: &Digest) -> Result<Option<BlobAge>, StorageError> {
        each!(self.blob_age(d))
    }

    /// Opens a blob for reading. `range` is an inclusive `(first, last)` pair of byte offsets;
    /// `last` is clamped to the end of the blob. A range starting at or past the end yields
    /// `len == 0` with `start == first`; checking that (and answering 416) is the caller's job.
    /// `Ok(None)` when the blob is absent.
    pub async fn read(
        &self,
        d: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BlobRead>, StorageError> {
        if let Some(content) = self.small.get(d) {
            return Ok(Some(read_bytes(content, range)));
        }
        let Some(read) = each!(self.read(d, range))? else { return Ok(None) };
        if read.size > SMALL_BLOB || read.start != 0 || read.len != read.size {
            return Ok(Some(read));
        }
        // A whole small blob: keep it for the next read (a second read of a small blob is
        // the common case: every pull of an image reads its config).
        let mut chunks: Vec<bytes::Bytes> = read.body.try_collect().await?;
        let content = match chunks.len() {
            1 => chunks.swap_remove(0),
            _ => bytes::Bytes::from(chunks.concat()),
        };
        if content.len() as u64 != read.size {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("blob {d} holds {} bytes, not {}", content.len(), read.size),
            )));
        }
        self.small.insert(d, content.clone());
        Ok(Some(read_bytes(content, None)))
    }

    /// Whether blob GETs are answered with a redirect to the object store.
    pub fn redirects(&self) -> bool {
        matches!(&self.backend, Backend::S3(s) if s.redirects())
    }

    /// A URL a client may fetch the blob from directly (S3 with `redirect`), else `None`.
    /// The caller has checked that the blob exists and may be read.
    pub async fn redirect_url(&self, d: &Digest) -> Result<Option<String>, StorageError> {
        match &self.backend {
            Backend::Fs(_) => Ok(None),
            Backend::S3(s) => s.redirect_url(d).await,
        }
    }

    /// Removes a blob. `Ok(false)` if it was not there.
    pub async fn delete(&self, d: &Digest) -> Result<bool, StorageError> {
        self.small.remove(d);
        each!(self.delete(d))
    }

    /// Stores small content held in memory (manifests, tests). Verifies `expected` when given,
    /// otherwise computes the sha256 digest. Storing content that is already present succeeds.
    pub async fn put_bytes(&self, expected: Option<&Digest>, bytes: &[u8]) -> Result<Digest, StorageError> {
        each!(self.put_bytes(expected, bytes))
    }

    /// Monolithic upload: streams `body` while hashing it with `expected.algorithm()`; the blob
    /// becomes visible only once durable and verified. Returns the size. On a digest mismatch,
    /// a body error or cancellation nothing becomes visible.
    pub async fn put_stream(&self, expected: &Digest, body: BodyStream) -> Result<u64, StorageError> {
        each!(self.put_stream(expected, body))
    }

    /// Digests of all stored blobs, sorted.
    pub async fn list_blobs(&self) -> Result<Vec<Digest>, StorageError> {
        each!(self.list_blobs())
    }

    /// Starts a resumable upload; returns its id (a lowercase hyphenated uuid v4).
    pub async fn create_upload(&self) -> Result<String, StorageError> {
        each!(self.create_upload())
    }

    /// Number of bytes received so far.
    pub async fn upload_size(&self, id: &str) -> Result<u64, StorageError> {
        each!(self.upload_size(id))
    }

    /// Appends a chunk. If `start` is given it must equal the current size, else
    /// `OffsetMismatch` and nothing is written. Returns the new size. A body that fails leaves
    /// the upload at its size before this call, so the client can resume from there.
    pub async fn append(&self, id: &str, start: Option<u64>, body: BodyStream) -> Result<u64, StorageError> {
        each!(self.append(id, start, body))
    }

    /// Finishes an upload: verifies that its content hashes to `expected`, then makes it the
    /// blob. Returns the size. On `DigestMismatch` the upload is left as it was.
    pub async fn commit(&self, id: &str, expected: &Digest) -> Result<u64, StorageError> {
        each!(self.commit(id, expected))
    }

    /// Abandons an upload and removes its data. `Ok(false)` if there was no such upload.
    pub async fn cancel(&self, id: &str) -> Result<bool, StorageError> {
        each!(self.cancel(id))
    }

    /// Ids of uploads whose data was last written before `older_than`.
    pub async fn stale_uploads(&self, older_than: SystemTime) -> Result<Vec<String>, StorageError> {
        each!(self.stale_uploads(older_than))
    }

    /// Moves a blob to garbage collection's trash; `None` if absent. It stays restorable
    /// until [`purge`](Self::purge).
    pub async fn trash(&self, d: &Digest) -> Result<Option<BlobAge>, StorageError> {
        self.small.remove(d);
        each!(self.trash(d))
    }

    /// Puts a trashed blob back (or drops the trashed copy if the blob was stored again).
    pub async fn restore(&self, d: &Digest) -> Result<(), StorageError> {
        each!(self.restore(d))
    }

    /// Deletes a trashed blob for good.
    pub async fn purge(&self, d: &Digest) -> Result<(), StorageError> {
        each!(self.purge(d))
    }

    /// Blobs left in the trash by a run that did not finish.
    pub async fn list_trash(&self) -> Result<Vec<Digest>, StorageError> {
        each!(self.list_trash())
    }
}
