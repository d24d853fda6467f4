//! Content-addressed filesystem blob store and resumable upload sessions.
//!
//! Layout under the root directory:
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

use std::collections::HashMap;
use std::fmt;
use std::fs::{File as StdFile, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::task::JoinHandle;
use uuid::Uuid;
use wharf_oci::{Algorithm, Digest, DigestHasher};

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
}

/// A stream of body bytes, incoming (uploads) or outgoing (reads).
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Stream `len` bytes of `file` from `start`, read by a blocking thread up to `READ_AHEAD`
/// chunks ahead of the consumer, straight into the chunk that is sent: one copy from the page
/// cache, none through an intermediate buffer. Stops when the consumer goes away.
fn read_ahead(mut file: StdFile, start: u64, len: u64) -> BodyStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut remaining = len;
        while remaining > 0 {
            let n = remaining.min(READ_CHUNK as u64);
            // `read_to_end` fills the spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(n as usize);
            let chunk = match (&mut file).take(n).read_to_end(&mut buf) {
                Ok(got) if got as u64 == n => Ok(Bytes::from(buf)),
                Ok(_) => {
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "blob file is shorter than it was"))
                }
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
            remaining -= n;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }))
}

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

/// Filesystem blob store. Cheap to clone; clones share upload-session state.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    uploads: PathBuf,
    tmp: PathBuf,
    /// Per-upload lock and incremental hash state. An entry exists only while this process has
    /// touched the upload; after a restart the hash state is gone and commit re-hashes the file.
    sessions: SyncMutex<HashMap<String, Arc<Mutex<Session>>>>,
}

#[derive(Default)]
struct Session {
    /// Hash of the first `.1` bytes of the upload's data file.
    hasher: Option<(DigestHasher, u64)>,
}

impl fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStore").field("root", &self.inner.root).finish()
    }
}

impl BlobStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        let inner = Inner {
            blobs: root.join("blobs"),
            uploads: root.join("uploads"),
            tmp: root.join("tmp"),
            root,
            sessions: SyncMutex::new(HashMap::new()),
        };
        let (blobs, uploads, tmp) = (inner.blobs.clone(), inner.uploads.clone(), inner.tmp.clone());
        blocking(move || {
            for dir in [&blobs, &uploads, &tmp] {
                std::fs::create_dir_all(dir)?;
            }
            for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
                std::fs::create_dir_all(blobs.join(algorithm.as_str()))?;
            }
            sweep_tmp(&tmp);
            Ok(())
        })
        .await?;
        Ok(BlobStore { inner: Arc::new(inner) })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Size of the blob, if it is present.
    pub async fn stat(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.inner.blob_path(d)).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Size of a stored blob, marking it as just used (its mtime, which garbage collection's
    /// grace period counts from): for a mount, which links existing content. `Ok(None)` if absent.
    pub async fn touch(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        let path = self.inner.blob_path(d);
        blocking(move || match touch_file(&path) {
            Ok(size) => Ok(Some(size)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await
    }

    /// Open a blob for reading. `range` is an inclusive `(first, last)` pair of byte offsets;
    /// `last` is clamped to the end of the blob. A range starting at or past the end yields
    /// `len == 0` with `start == first`; checking that (and answering 416) is the caller's job.
    /// `Ok(None)` when the blob is absent.
    pub async fn read(
        &self,
        d: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BlobRead>, StorageError> {
        let path = self.inner.blob_path(d);
        let opened = blocking(move || match StdFile::open(path) {
            Ok(f) => {
                let size = f.metadata()?.len();
                Ok(Some((f, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?;
        let Some((file, size)) = opened else { return Ok(None) };
        let (start, len) = match range {
            None => (0, size),
            Some((first, last)) => {
                let last = last.min(size.saturating_sub(1));
                if size == 0 || first > last { (first, 0) } else { (first, last - first + 1) }
            }
        };
        let body = read_ahead(file, start, len);
        Ok(Some(BlobRead { size, start, len, body: Box::pin(body) }))
    }

    /// Remove a blob. `Ok(false)` if it was not there.
    pub async fn delete(&self, d: &Digest) -> Result<bool, StorageError> {
        match tokio::fs::remove_file(self.inner.blob_path(d)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Store small content held in memory (manifests, tests). Verifies `expected` when given,
    /// otherwise computes the sha256 digest. Storing content that is already present succeeds.
    pub async fn put_bytes(&self, expected: Option<&Digest>, bytes: &[u8]) -> Result<Digest, StorageError> {
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let expected = expected.cloned();
        let data = bytes.to_vec();
        let inner = self.inner.clone();
        blocking(move || {
            let actual = Digest::compute(algorithm, &data);
            if let Some(expected) = expected.filter(|e| *e != actual) {
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            if inner.blob_path(&actual).is_file() {
                return Ok(actual);
            }
            let tmp = inner.tmp_path();
            let result = (|| {
                let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
                file.write_all(&data)?;
                inner.install(&tmp, &file, &actual)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result?;
            Ok(actual)
        })
        .await
    }

    /// Monolithic upload: stream `body` into a temporary file while hashing it with
    /// `expected.algorithm()`, then fsync, verify and rename into place. Returns the size.
    /// On a digest mismatch, a body error or cancellation nothing becomes visible and the
    /// temporary file is removed.
    pub async fn put_stream(&self, expected: &Digest, mut body: BodyStream) -> Result<u64, StorageError> {
        let tmp = self.inner.tmp_path();
        let file = {
            let tmp = tmp.clone();
            blocking(move || Ok(OpenOptions::new().write(true).create_new(true).open(&tmp)?)).await?
        };
        let mut spool = Spool::new(file, 0, Cleanup::Remove(tmp.clone()), None);
        let mut hasher = expected.algorithm().hasher();
        let size = match pump(&mut body, Some(&mut hasher), &mut spool).await {
            Ok(n) => n,
            Err(e) => {
                spool.abort().await;
                return Err(e);
            }
        };
        let actual = hasher.finish();
        if actual != *expected {
            spool.abort().await;
            return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
        }
        let (file, _) = spool.finish().await?;
        let inner = self.inner.clone();
        let digest = expected.clone();
        blocking(move || {
            let result = inner.install(&tmp, &file, &digest);
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            Ok(result?)
        })
        .await?;
        Ok(size)
    }

    /// Start a resumable upload; returns its id (a lowercase hyphenated uuid v4).
    pub async fn create_upload(&self) -> Result<String, StorageError> {
        let id = Uuid::new_v4().hyphenated().to_string();
        let dir = self.inner.uploads.join(&id);
        blocking(move || {
            std::fs::create_dir(&dir)?;
            OpenOptions::new().write(true).create_new(true).open(dir.join("data"))?;
            Ok(())
        })
        .await?;
        let session = Session { hasher: Some((Algorithm::Sha256.hasher(), 0)) };
        self.inner.sessions_map().insert(id.clone(), Arc::new(Mutex::new(session)));
        Ok(id)
    }

    /// Number of bytes received so far. Waits for an append in progress on the same upload.
    pub async fn upload_size(&self, id: &str) -> Result<u64, StorageError> {
        let data = self.inner.upload_dir(id)?.join("data");
        let session = self.inner.session(id);
        let guard = session.lock().await;
        match tokio::fs::metadata(&data).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                drop(guard);
                self.inner.forget(id, &session);
                Err(StorageError::UploadUnknown(id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Append a chunk to an upload. If `start` is given it must equal the current size, else
    /// `OffsetMismatch` and nothing is written. Returns the new size. Appends to one upload are
    /// serialised. If the body fails (or the future is dropped) the upload is truncated back to
    /// its size before this call, so the client can resume from there.
    pub async fn append(
        &self,
        id: &str,
        start: Option<u64>,
        mut body: BodyStream,
    ) -> Result<u64, StorageError> {
        let data = self.inner.upload_dir(id)?.join("data");
        let session = self.inner.session(id);
        let guard = session.clone().lock_owned().await;
        let opened = {
            let data = data.clone();
            blocking(move || {
                let mut file = OpenOptions::new().write(true).open(&data)?;
                let size = file.metadata()?.len();
                file.seek(SeekFrom::Start(size))?;
                Ok((file, size))
            })
            .await
        };
        let (file, size) = match opened {
            Ok(x) => x,
            Err(StorageError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                drop(guard);
                self.inner.forget(id, &session);
                return Err(StorageError::UploadUnknown(id.to_owned()));
            }
            Err(e) => return Err(e),
        };
        if let Some(start) = start.filter(|s| *s != size) {
            return Err(StorageError::OffsetMismatch { expected: start, actual: size });
        }
        // Continue the hash only if it covers exactly what is on disk; otherwise commit re-hashes.
        let mut hasher = match &guard.hasher {
            Some((h, covered)) if *covered == size => Some(h.clone()),
            _ => None,
        };
        let mut spool = Spool::new(file, size, Cleanup::Truncate(data, size), Some(guard));
        let n = match pump(&mut body, hasher.as_mut(), &mut spool).await {
            Ok(n) => n,
            Err(e) => {
                spool.abort().await;
                return Err(e);
            }
        };
        let (_file, guard) = spool.finish().await?;
        let new_size = size + n;
        if let Some(mut guard) = guard {
            guard.hasher = hasher.map(|h| (h, new_size));
        }
        Ok(new_size)
    }

    /// Finish an upload: verify its content hashes to `expected` (from the in-memory hash state
    /// when it covers the whole file and the algorithm matches, else by re-hashing the file),
    /// fsync, and rename it into place (if the blob already exists the upload is just dropped).
    /// Returns the size. On `DigestMismatch` the upload is left as it was.
    pub async fn commit(&self, id: &str, expected: &Digest) -> Result<u64, StorageError> {
        let dir = self.inner.upload_dir(id)?;
        let session = self.inner.session(id);
        let guard = session.clone().lock_owned().await;
        let inner = self.inner.clone();
        let expected = expected.clone();
        // One blocking task holding the session lock: verification, rename and cleanup run to
        // the end even if the caller goes away.
        let result = blocking(move || {
            let guard = guard;
            let data = dir.join("data");
            let file = match OpenOptions::new().read(true).write(true).open(&data) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let size = file.metadata()?.len();
            let actual = match &guard.hasher {
                Some((h, covered)) if *covered == size && hasher_algorithm(h) == expected.algorithm() => {
                    h.clone().finish()
                }
                _ => rehash(&file, expected.algorithm())?,
            };
            if actual != expected {
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            inner.install(&data, &file, &expected)?;
            drop(file);
            remove_dir_all_quiet(&dir)?;
            drop(guard);
            Ok(Some(size))
        })
        .await;
        match result {
            Ok(Some(size)) => {
                self.inner.forget(id, &session);
                Ok(size)
            }
            Ok(None) => {
                self.inner.forget(id, &session);
                Err(StorageError::UploadUnknown(id.to_owned()))
            }
            Err(e) => Err(e),
        }
    }

    /// Abandon an upload and remove its data. `Ok(false)` if there was no such upload.
    pub async fn cancel(&self, id: &str) -> Result<bool, StorageError> {
        let Ok(dir) = self.inner.upload_dir(id) else {
            return Ok(false);
        };
        let session = self.inner.session(id);
        let guard = session.lock().await;
        let existed = match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        drop(guard);
        self.inner.forget(id, &session);
        Ok(existed)
    }

    /// Ids of uploads whose data was last modified before `older_than`.
    pub async fn stale_uploads(&self, older_than: SystemTime) -> Result<Vec<String>, StorageError> {
        let uploads = self.inner.uploads.clone();
        blocking(move || {
            let mut stale = Vec::new();
            for entry in std::fs::read_dir(&uploads)? {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if validate_id(&name).is_err() {
                    continue;
                }
                let modified = std::fs::metadata(entry.path().join("data"))
                    .or_else(|_| entry.metadata())
                    .and_then(|m| m.modified());
                match modified {
                    Ok(t) if t < older_than => stale.push(name),
                    Ok(_) => {}
                    // Removed while we looked (committed or cancelled): not stale.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            stale.sort();
            Ok(stale)
        })
        .await
    }

    /// Digests of all stored blobs, sorted.
    pub async fn list_blobs(&self) -> Result<Vec<Digest>, StorageError> {
        let blobs = self.inner.blobs.clone();
        blocking(move || {
            let mut out = Vec::new();
            for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
                let algo_dir = blobs.join(algorithm.as_str());
                for prefix in read_dir_if_exists(&algo_dir)? {
                    let prefix = prefix?;
                    let Some(prefix_name) = prefix.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    if prefix_name.len() != 2 || !prefix.file_type()?.is_dir() {
                        continue;
                    }
                    for blob in read_dir_if_exists(&prefix.path())? {
                        let blob = blob?;
                        let Some(name) = blob.file_name().to_str().map(str::to_owned) else {
                            continue;
                        };
                        if !name.starts_with(&prefix_name) || !blob.file_type()?.is_file() {
                            continue;
                        }
                        if let Ok(d) = format!("{}:{name}", algorithm.as_str()).parse::<Digest>() {
                            out.push(d);
                        }
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }
}

impl Inner {
    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs.join(d.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(Uuid::new_v4().hyphenated().to_string())
    }

    /// The directory of an upload. The id must be a canonical uuid, so it can never name
    /// anything outside `uploads/`.
    fn upload_dir(&self, id: &str) -> Result<PathBuf, StorageError> {
        validate_id(id)?;
        Ok(self.uploads.join(id))
    }

    fn sessions_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Session>>>> {
        // The map is never left inconsistent by a panic, so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, id: &str) -> Arc<Mutex<Session>> {
        self.sessions_map().entry(id.to_owned()).or_default().clone()
    }

    /// Drop the session entry for `id` if it is still `session`.
    fn forget(&self, id: &str, session: &Arc<Mutex<Session>>) {
        let mut map = self.sessions_map();
        if map.get(id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(id);
        }
    }

    /// Make the verified content at `src` (open as `file`) the blob `d`: fsync, rename, fsync
    /// the directory. If the blob already exists, `src` is removed instead. Blocking.
    fn install(&self, src: &Path, file: &StdFile, d: &Digest) -> io::Result<()> {
        let dest = self.blob_path(d);
        if dest.is_file() {
            // The content is pushed again: restart garbage collection's grace period for it.
            touch_file(&dest)?;
            return match std::fs::remove_file(src) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        file.sync_all()?;
        let dir = dest.parent().unwrap_or(&self.blobs);
        let created = !dir.is_dir();
        if created {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::rename(src, &dest)?;
        sync_dir(dir);
        if let Some(parent) = dir.parent().filter(|_| created) {
            sync_dir(parent);
        }
        Ok(())
    }
}

/// Set a file's mtime to now; returns its size.
fn touch_file(path: &Path) -> io::Result<u64> {
    let file = OpenOptions::new().append(true).open(path)?;
    file.set_modified(SystemTime::now())?;
    Ok(file.metadata()?.len())
}

fn validate_id(id: &str) -> Result<(), StorageError> {
    match Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(StorageError::UploadUnknown(id.chars().take(80).collect())),
    }
}

fn hasher_algorithm(h: &DigestHasher) -> Algorithm {
    match h {
        DigestHasher::Sha256(_) => Algorithm::Sha256,
        DigestHasher::Sha512(_) => Algorithm::Sha512,
    }
}

/// Hash a whole file from the start. Blocking.
fn rehash(file: &StdFile, algorithm: Algorithm) -> io::Result<Digest> {
    let mut hasher = algorithm.hasher();
    let mut reader = file;
    reader.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finish())
}

/// fsync a directory so a rename in it is durable. Best effort.
fn sync_dir(dir: &Path) {
    if let Err(e) = StdFile::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
    }
}

fn remove_dir_all_quiet(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_dir_if_exists(dir: &Path) -> io::Result<Box<dyn Iterator<Item = io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

/// Remove temporary files a crash left behind. Best effort.
fn sweep_tmp(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > TMP_MAX_AGE));
        if !old {
            continue;
        }
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "could not remove stale temporary file");
        }
    }
}

/// Ask the kernel to start writing a just-written range to disk, so that the fsync before the
/// rename has little left to do. Best effort; Linux only.
#[cfg(target_os = "linux")]
fn start_writeback(file: &StdFile, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call; the call touches no memory.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &StdFile, _offset: u64, _len: u64) {}

/// Run blocking filesystem work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::Io(io::Error::other(e))),
    }
}

/// Read `body` to the end, hashing each chunk and handing it to `spool`. Returns the byte count.
async fn pump(
    body: &mut BodyStream,
    mut hasher: Option<&mut DigestHasher>,
    spool: &mut Spool,
) -> Result<u64, StorageError> {
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
        if chunk.is_empty() {
            continue;
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        n += chunk.len() as u64;
        spool.write(chunk).await?;
    }
    Ok(n)
}

/// What undoes a write that did not finish.
enum Cleanup {
    /// Remove the temporary file.
    Remove(PathBuf),
    /// Truncate the upload data file back to its length before the append.
    Truncate(PathBuf, u64),
}

impl Cleanup {
    fn run(self) {
        let result = match &self {
            Cleanup::Remove(path) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Cleanup::Truncate(path, len) => {
                OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(*len))
            }
        };
        if let Err(e) = result {
            // A failed truncate leaves a longer upload whose hash state no longer matches its
            // size, so commit falls back to re-hashing: still consistent.
            tracing::warn!(error = %e, "could not roll back an unfinished write");
        }
    }
}

enum Batch {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl Batch {
    fn as_slice(&self) -> &[u8] {
        match self {
            Batch::Owned(v) => v,
            Batch::Shared(b) => b,
        }
    }
}

type InFlight = JoinHandle<(StdFile, Option<Vec<u8>>, io::Result<()>)>;

/// Writes a stream of chunks to a file through the blocking pool: small chunks are coalesced
/// into batches of `WRITE_BATCH`, one batch is in flight while the next is collected (and
/// hashed by the caller). Until `finish` succeeds the write is undone on error, on `abort`, and
/// on drop (after the in-flight batch completes), while still holding the session lock.
struct Spool {
    file: Option<StdFile>,
    /// File offset where the next batch lands.
    pos: u64,
    inflight: Option<InFlight>,
    buf: Vec<u8>,
    spare: Option<Vec<u8>>,
    cleanup: Option<Cleanup>,
    guard: Option<OwnedMutexGuard<Session>>,
}

impl Spool {
    fn new(file: StdFile, pos: u64, cleanup: Cleanup, guard: Option<OwnedMutexGuard<Session>>) -> Self {
        Spool {
            file: Some(file),
            pos,
            inflight: None,
            buf: Vec::new(),
            spare: None,
            cleanup: Some(cleanup),
            guard,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> io::Result<()> {
        if chunk.len() >= WRITE_BATCH {
            self.flush_buf().await?;
            return self.submit(Batch::Shared(chunk)).await;
        }
        if self.buf.len() + chunk.len() > WRITE_BATCH {
            self.flush_buf().await?;
        }
        if self.buf.capacity() == 0 {
            self.buf = self.spare.take().unwrap_or_else(|| Vec::with_capacity(WRITE_BATCH));
        }
        self.buf.extend_from_slice(&chunk);
        if self.buf.len() >= WRITE_BATCH {
            self.flush_buf().await?;
        }
        Ok(())
    }

    async fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::take(&mut self.buf);
        self.submit(Batch::Owned(full)).await
    }

    /// Wait for the batch in flight. The handle stays in `self` while awaited, so that a drop
    /// at this point still waits for it before cleaning up.
    async fn wait(&mut self) -> io::Result<()> {
        let Some(handle) = self.inflight.as_mut() else {
            return Ok(());
        };
        let joined = handle.await;
        self.inflight = None;
        let (file, spare, result) = joined.map_err(io::Error::other)?;
        self.file = Some(file);
        if let Some(mut v) = spare {
            v.clear();
            self.spare = Some(v);
        }
        result
    }

    async fn submit(&mut self, batch: Batch) -> io::Result<()> {
        self.wait().await?;
        let mut file = self.file.take().ok_or_else(|| io::Error::other("spool lost its file"))?;
        let pos = self.pos;
        self.pos += batch.as_slice().len() as u64;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let result = file.write_all(batch.as_slice());
            if result.is_ok() {
                start_writeback(&file, pos, batch.as_slice().len() as u64);
            }
            let spare = match batch {
                Batch::Owned(v) => Some(v),
                Batch::Shared(_) => None,
            };
            (file, spare, result)
        }));
        Ok(())
    }

    /// Write out what is buffered and wait for it. On success the write can no longer be
    /// undone by this spool; returns the file and the session lock.
    async fn finish(mut self) -> io::Result<(StdFile, Option<OwnedMutexGuard<Session>>)> {
        let flushed = match self.flush_buf().await {
            Ok(()) => self.wait().await,
            Err(e) => Err(e),
        };
        if let Err(e) = flushed {
            self.abort().await;
            return Err(e);
        }
        self.cleanup = None;
        let file = self.file.take().ok_or_else(|| io::Error::other("spool lost its file"))?;
        Ok((file, self.guard.take()))
    }

    /// Undo the write: wait for the batch in flight, then remove or truncate the file, holding
    /// the session lock until that is done.
    async fn abort(mut self) {
        let _ = self.wait().await;
        self.file = None;
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let guard = self.guard.take();
        let _ = tokio::task::spawn_blocking(move || {
            cleanup.run();
            drop(guard);
        })
        .await;
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.take() else {
            return;
        };
        let inflight = self.inflight.take();
        let guard = self.guard.take();
        self.file = None;
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Some(handle) = inflight {
                        let _ = handle.await;
                    }
                    let _ = tokio::task::spawn_blocking(move || {
                        cleanup.run();
                        drop(guard);
                    })
                    .await;
                });
            }
            Err(_) => {
                cleanup.run();
                drop(guard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send() {
        fn check(store: BlobStore, d: Digest, body: BodyStream) {
            assert_send(&store.put_stream(&d, body));
            let body: BodyStream = Box::pin(futures_util::stream::empty());
            assert_send(&store.append("x", None, body));
            assert_send(&store.commit("x", &d));
            assert_send(&store.read(&d, None));
        }
        let _ = check;
        fn sync<T: Send + Sync + Clone>() {}
        sync::<BlobStore>();
    }

    #[test]
    fn upload_ids_are_strict() {
        assert!(validate_id("3f2b8c1e-9a4d-4e7b-8c6a-1b2c3d4e5f60").is_ok());
        for bad in [
            "",
            "..",
            "../etc",
            "../../../../etc/passwd",
            "3F2B8C1E-9A4D-4E7B-8C6A-1B2C3D4E5F60",
            "3f2b8c1e9a4d4e7b8c6a1b2c3d4e5f60",
            "{3f2b8c1e-9a4d-4e7b-8c6a-1b2c3d4e5f60}",
            "urn:uuid:3f2b8c1e-9a4d-4e7b-8c6a-1b2c3d4e5f60",
            "3f2b8c1e-9a4d-4e7b-8c6a-1b2c3d4e5f60/../x",
            "3f2b8c1e-9a4d-4e7b-8c6a-1b2c3d4e5f6/",
        ] {
            assert!(matches!(validate_id(bad), Err(StorageError::UploadUnknown(_))), "{bad}");
        }
    }
}
