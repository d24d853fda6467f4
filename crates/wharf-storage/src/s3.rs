//! Blobs in an S3-compatible object store (Garage, Ceph RGW, MinIO, AWS), through the
//! `object_store` crate: no hand-written signing.
//!
//! Keys under the configured prefix:
//!
//! ```text
//! blobs/<algorithm>/<first two hex>/<hex>   committed, verified blobs
//! touch/<algorithm>/<hex>                   empty; its Last-Modified marks the blob as just used
//! gc-trash/<algorithm>-<hex>                blobs between gc's sweep transaction and removal
//! uploads/<uuid>/created                    empty; the upload exists
//! uploads/<uuid>/chunk-<offset>             one object per appended chunk
//! uploads/<uuid>/hash-<end>                 the digest of bytes [0, end), when one replica saw them all
//! ```
//!
//! Every replica of a registry shares the bucket, so an upload session lives entirely in it:
//! any replica can append the next chunk or commit. A chunk becomes an object only when its
//! whole body arrived (a single PUT, or a multipart upload completed at the end), so a replica
//! that dies mid-chunk leaves the upload at its previous size. A blob is written to its final key
//! only after its bytes hashed to its digest: a multipart upload is completed, or a chunk copied,
//! once verification passed, so nothing unverified is ever visible. S3 multipart parts must be at
//! least 5 MiB (but the last), while the distribution spec allows chunks of any size; chunks are
//! therefore separate objects, and a commit of several chunks streams them, hashing, into one
//! multipart upload of the blob. The common case, one chunk or a monolithic upload, is a
//! server-side copy or a direct upload.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, PutPayload, RetryConfig,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use uuid::Uuid;
use wharf_oci::{Algorithm, Digest, DigestHasher};

use crate::upload::{Session, hasher_algorithm, validate_id};
use crate::{BlobAge, BlobRead, BodyStream, StorageError};

/// Parts of multipart uploads: S3's minimum is 5 MiB; two are in flight per upload at most, so
/// memory per upload stays near three parts.
const PART_SIZE: usize = 8 << 20;
const PART_CONCURRENCY: usize = 2;
/// Above this, a one-chunk upload is streamed into a multipart upload instead of copied:
/// a single CopyObject is limited to 5 GiB on AWS.
const COPY_MAX: u64 = 5 << 30;
/// Reads longer than this fetch ranges of READ_PART bytes, READ_PARTS_AHEAD at a time.
const PARALLEL_READ_FROM: u64 = 16 << 20;
const READ_PART: u64 = 4 << 20;
const READ_PARTS_AHEAD: usize = 3;
/// How long a redirect URL for a blob GET stays valid.
const PRESIGN_FOR: Duration = Duration::from_secs(15 * 60);

/// Where the blobs live, as `[storage]` in the server configuration says.
#[derive(Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    /// `None`: AWS, virtual-hosted addressing. A custom endpoint uses path-style addressing.
    pub endpoint: Option<String>,
    pub region: String,
    /// Key prefix inside the bucket ("" or "some/path").
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Answer blob GETs with a redirect to a presigned URL.
    pub redirect: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("redirect", &self.redirect)
            .finish()
    }
}

impl S3Config {
    /// "bucket B at ENDPOINT": how errors name the store.
    pub fn describe(&self) -> String {
        let endpoint = self.endpoint.as_deref().unwrap_or("AWS S3");
        if self.prefix.is_empty() {
            format!("bucket {} at {endpoint}", self.bucket)
        } else {
            format!("bucket {} (prefix {}) at {endpoint}", self.bucket, self.prefix)
        }
    }
}

pub(crate) struct S3Store {
    s3: Arc<AmazonS3>,
    prefix: String,
    redirect: bool,
    describe: String,
    /// Per-upload lock and hash state on this replica (see `upload.rs`); the bucket holds the rest.
    sessions: SyncMutex<HashMap<String, Arc<Mutex<Session>>>>,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

/// One chunk object of an upload.
struct Chunk {
    offset: u64,
    size: u64,
    path: Path,
}

/// What the bucket holds for one upload.
struct UploadObjects {
    chunks: Vec<Chunk>,
    /// `hash-<end>` objects by `end`.
    hashes: BTreeMap<u64, Path>,
    all: Vec<Path>,
}

impl UploadObjects {
    /// Bytes received: chunks are contiguous from offset 0 (a chunk is only ever written at the
    /// size the upload had); anything past a gap is ignored.
    fn size(&self) -> u64 {
        let mut size = 0;
        for c in &self.chunks {
            if c.offset != size {
                break;
            }
            size += c.size;
        }
        size
    }

    fn data_chunks(&self) -> Vec<&Chunk> {
        let mut out = Vec::new();
        let mut size = 0;
        for c in &self.chunks {
            if c.offset != size {
                break;
            }
            size += c.size;
            if c.size > 0 {
                out.push(c);
            }
        }
        out
    }
}

impl S3Store {
    /// Connects and checks that the bucket is there and the credentials work.
    pub(crate) async fn open(config: S3Config) -> Result<S3Store, StorageError> {
        let describe = config.describe();
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            // The digest is computed anyway; signing the payload would hash every byte again.
            .with_unsigned_payload(true)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: 2,
                // An unreachable store turns into a 503 for the client within seconds.
                retry_timeout: Duration::from_secs(5),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(3))
                    // Blob bodies may take long; only connecting is bounded.
                    .with_timeout_disabled()
                    .with_pool_idle_timeout(Duration::from_secs(60)),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let s3 = builder
            .build()
            .map_err(|e| StorageError::Unavailable(format!("S3 configuration for {describe}: {e}")))?;
        let prefix = config.prefix.trim_matches('/');
        let store = S3Store {
            s3: Arc::new(s3),
            prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
            redirect: config.redirect,
            describe,
            sessions: SyncMutex::new(HashMap::new()),
        };
        store.check().await?;
        Ok(store)
    }

    pub(crate) fn redirects(&self) -> bool {
        self.redirect
    }

    pub(crate) fn describe(&self) -> &str {
        &self.describe
    }

    /// Lists the prefix: fails when the bucket is missing, the credentials are wrong or the
    /// endpoint is unreachable.
    pub(crate) async fn check(&self) -> Result<(), StorageError> {
        let prefix = self.key("blobs");
        self.s3.list_with_delimiter(Some(&prefix)).await.map_err(|e| self.unavailable(e))?;
        Ok(())
    }

    fn key(&self, rel: &str) -> Path {
        Path::from(format!("{}{rel}", self.prefix))
    }

    fn blob_key(&self, d: &Digest) -> Path {
        let hex = d.hex();
        self.key(&format!("blobs/{}/{}/{hex}", d.algorithm().as_str(), &hex[..2]))
    }

    fn touch_key(&self, d: &Digest) -> Path {
        self.key(&format!("touch/{}/{}", d.algorithm().as_str(), d.hex()))
    }

    fn trash_key(&self, d: &Digest) -> Path {
        self.key(&format!("gc-trash/{}", d.tag_form()))
    }

    fn upload_prefix(&self, id: &str) -> Path {
        self.key(&format!("uploads/{id}"))
    }

    fn unavailable(&self, e: object_store::Error) -> StorageError {
        StorageError::Unavailable(format!("object store ({}): {e}", self.describe))
    }

    fn writer(&self, path: Path) -> BufWriter {
        let s3: Arc<dyn ObjectStore> = self.s3.clone();
        BufWriter::with_capacity(s3, path, PART_SIZE).with_max_concurrency(PART_CONCURRENCY)
    }

    async fn head(&self, path: &Path) -> Result<Option<ObjectMeta>, StorageError> {
        match self.s3.head(path).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn delete_quiet(&self, path: &Path) -> Result<bool, StorageError> {
        match self.s3.delete(path).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.unavailable(e)),
        }
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<(), StorageError> {
        self.s3.copy(from, to).await.map_err(|e| self.unavailable(e))
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<ObjectMeta>, StorageError> {
        self.s3.list(Some(prefix)).try_collect().await.map_err(|e| self.unavailable(e))
    }

    pub(crate) async fn stat(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        Ok(self.head(&self.blob_key(d)).await?.map(|m| m.size))
    }

    pub(crate) async fn touch(&self, d: &Digest) -> Result<Option<u64>, StorageError> {
        let Some(size) = self.stat(d).await? else { return Ok(None) };
        self.s3.put(&self.touch_key(d), PutPayload::new()).await.map_err(|e| self.unavailable(e))?;
        Ok(Some(size))
    }

    pub(crate) async fn blob_age(&self, d: &Digest) -> Result<Option<BlobAge>, StorageError> {
        let Some(meta) = self.head(&self.blob_key(d)).await? else { return Ok(None) };
        let mut modified = SystemTime::from(meta.last_modified);
        if let Some(touched) = self.head(&self.touch_key(d)).await? {
            modified = modified.max(SystemTime::from(touched.last_modified));
        }
        Ok(Some(BlobAge { size: meta.size, modified }))
    }

    pub(crate) async fn read(
        &self,
        d: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<Option<BlobRead>, StorageError> {
        let path = self.blob_key(d);
        let (size, start, len, get_range) = match range {
            None => (None, 0, None, None),
            Some((first, last)) => {
                let Some(meta) = self.head(&path).await? else { return Ok(None) };
                let size = meta.size;
                let last = last.min(size.saturating_sub(1));
                if size == 0 || first > last {
                    let empty: BodyStream = Box::pin(futures_util::stream::empty());
                    return Ok(Some(BlobRead { size, start: first, len: 0, body: empty }));
                }
                (Some(size), first, Some(last - first + 1), Some(GetRange::Bounded(first..last + 1)))
            }
        };
        let options = GetOptions { range: get_range, ..Default::default() };
        let got = match self.s3.get_opts(&path, options).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        };
        let size = size.unwrap_or(got.meta.size);
        let len = len.unwrap_or(size);
        let describe = self.describe.clone();
        let first = got.into_stream();
        if len <= PARALLEL_READ_FROM {
            let body =
                first.map_err(move |e| std::io::Error::other(format!("object store ({describe}): {e}")));
            return Ok(Some(BlobRead { size, start, len, body: Box::pin(body) }));
        }
        // A large read: the first part from the response in hand, the rest as ranged GETs a few
        // at a time, in order. One GET stream runs at what one object-store connection gives;
        // several keep the store's cores busy. Memory: READ_PARTS_AHEAD parts per download.
        let end = start + len;
        let ranges: Vec<std::ops::Range<u64>> = (start + READ_PART..end)
            .step_by(READ_PART as usize)
            .map(|from| from..(from + READ_PART).min(end))
            .collect();
        let (s3, rest_path) = (self.s3.clone(), path.clone());
        let rest = futures_util::stream::iter(ranges)
            .map(move |r| {
                let (s3, path) = (s3.clone(), rest_path.clone());
                async move { s3.get_range(&path, r).await }
            })
            .buffered(READ_PARTS_AHEAD);
        let body = take_bytes(first, READ_PART)
            .chain(rest)
            .map_err(move |e| std::io::Error::other(format!("object store ({describe}): {e}")));
        Ok(Some(BlobRead { size, start, len, body: Box::pin(body) }))
    }

    /// A presigned GET URL for the blob, when redirects are configured.
    pub(crate) async fn redirect_url(&self, d: &Digest) -> Result<Option<String>, StorageError> {
        if !self.redirect {
            return Ok(None);
        }
        let url = self
            .s3
            .signed_url(http::Method::GET, &self.blob_key(d), PRESIGN_FOR)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(Some(url.to_string()))
    }

    pub(crate) async fn delete(&self, d: &Digest) -> Result<bool, StorageError> {
        let existed = self.head(&self.blob_key(d)).await?.is_some();
        self.delete_quiet(&self.blob_key(d)).await?;
        self.delete_quiet(&self.touch_key(d)).await?;
        Ok(existed)
    }

    pub(crate) async fn put_bytes(
        &self,
        expected: Option<&Digest>,
        bytes: &[u8],
    ) -> Result<Digest, StorageError> {
        let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
        let actual = Digest::compute(algorithm, bytes);
        if let Some(expected) = expected.filter(|e| **e != actual) {
            return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
        }
        self.s3
            .put(&self.blob_key(&actual), PutPayload::from(Bytes::copy_from_slice(bytes)))
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(actual)
    }

    /// Streams `body` to the blob's key while hashing it; the upload is completed only if the
    /// content hashes to `expected`, else aborted (nothing visible).
    pub(crate) async fn put_stream(
        &self,
        expected: &Digest,
        mut body: BodyStream,
    ) -> Result<u64, StorageError> {
        let mut writer = Writer::new(self.writer(self.blob_key(expected)));
        let mut hasher = expected.algorithm().hasher();
        let n = self.pump(&mut body, Some(&mut hasher), &mut writer).await?;
        let actual = hasher.finish();
        if actual != *expected {
            writer.abort().await;
            return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
        }
        writer.finish().await.map_err(|e| self.unavailable(e))?;
        Ok(n)
    }

    /// Reads `body` to the end into `writer`, hashing it when a hasher is given; returns the
    /// byte count. A body that fails aborts the writer (nothing becomes visible).
    async fn pump(
        &self,
        body: &mut BodyStream,
        mut hasher: Option<&mut DigestHasher>,
        writer: &mut Writer,
    ) -> Result<u64, StorageError> {
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    writer.abort().await;
                    return Err(StorageError::Body(e.to_string()));
                }
            };
            if chunk.is_empty() {
                continue;
            }
            if let Some(h) = hasher.as_deref_mut() {
                h.update(&chunk);
            }
            n += chunk.len() as u64;
            writer.put(chunk).await.map_err(|e| self.unavailable(e))?;
        }
        Ok(n)
    }

    pub(crate) async fn list_blobs(&self) -> Result<Vec<Digest>, StorageError> {
        let mut out = Vec::new();
        for meta in self.list(&self.key("blobs")).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            let [.., algorithm, _, hex] = parts.as_slice() else { continue };
            if let Ok(d) = format!("{}:{}", algorithm.as_ref(), hex.as_ref()).parse::<Digest>() {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }

    // --- garbage collection's trash -----------------------------------------------------

    /// Copies the blob into the trash, then deletes it. `None` if absent.
    pub(crate) async fn trash(&self, d: &Digest) -> Result<Option<BlobAge>, StorageError> {
        let Some(age) = self.blob_age(d).await? else { return Ok(None) };
        match self.s3.copy(&self.blob_key(d), &self.trash_key(d)).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.unavailable(e)),
        }
        self.delete_quiet(&self.blob_key(d)).await?;
        Ok(Some(age))
    }

    pub(crate) async fn restore(&self, d: &Digest) -> Result<(), StorageError> {
        if self.head(&self.blob_key(d)).await?.is_none() {
            match self.s3.copy(&self.trash_key(d), &self.blob_key(d)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.unavailable(e)),
            }
        }
        self.delete_quiet(&self.trash_key(d)).await?;
        Ok(())
    }

    pub(crate) async fn purge(&self, d: &Digest) -> Result<(), StorageError> {
        self.delete_quiet(&self.trash_key(d)).await?;
        self.delete_quiet(&self.touch_key(d)).await?;
        Ok(())
    }

    pub(crate) async fn list_trash(&self) -> Result<Vec<Digest>, StorageError> {
        let mut out: Vec<Digest> = self
            .list(&self.key("gc-trash"))
            .await?
            .into_iter()
            .filter_map(|m| m.location.filename().and_then(Digest::from_tag_form))
            .collect();
        out.sort();
        Ok(out)
    }

    // --- uploads -----------------------------------------------------------------------

    fn sessions_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Session>>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn session(&self, id: &str) -> Arc<Mutex<Session>> {
        self.sessions_map().entry(id.to_owned()).or_default().clone()
    }

    fn forget(&self, id: &str) {
        self.sessions_map().remove(id);
    }

    /// The upload's objects; `UploadUnknown` when there are none.
    async fn upload_objects(&self, id: &str) -> Result<UploadObjects, StorageError> {
        validate_id(id)?;
        let listed = self.list(&self.upload_prefix(id)).await?;
        if listed.is_empty() {
            return Err(StorageError::UploadUnknown(id.to_owned()));
        }
        let mut objects = UploadObjects { chunks: Vec::new(), hashes: BTreeMap::new(), all: Vec::new() };
        for meta in listed {
            if let Some(name) = meta.location.filename() {
                if let Some(offset) = name.strip_prefix("chunk-").and_then(|o| o.parse().ok()) {
                    objects.chunks.push(Chunk { offset, size: meta.size, path: meta.location.clone() });
                } else if let Some(end) = name.strip_prefix("hash-").and_then(|o| o.parse().ok()) {
                    objects.hashes.insert(end, meta.location.clone());
                }
            }
            objects.all.push(meta.location);
        }
        objects.chunks.sort_by_key(|c| c.offset);
        Ok(objects)
    }

    /// [`Self::upload_objects`], dropping this replica's session state for an upload that is
    /// gone (committed or cancelled elsewhere).
    async fn objects_or_forget(&self, id: &str) -> Result<UploadObjects, StorageError> {
        let objects = self.upload_objects(id).await;
        if let Err(StorageError::UploadUnknown(_)) = &objects {
            self.forget(id);
        }
        objects
    }

    pub(crate) async fn create_upload(&self) -> Result<String, StorageError> {
        let id = Uuid::new_v4().hyphenated().to_string();
        let marker = self.key(&format!("uploads/{id}/created"));
        self.s3.put(&marker, PutPayload::new()).await.map_err(|e| self.unavailable(e))?;
        let session = Session::fresh();
        self.sessions_map().insert(id.clone(), Arc::new(Mutex::new(session)));
        Ok(id)
    }

    pub(crate) async fn upload_size(&self, id: &str) -> Result<u64, StorageError> {
        validate_id(id)?;
        let session = self.session(id);
        let _guard = session.lock().await;
        Ok(self.objects_or_forget(id).await?.size())
    }

    /// Writes the chunk as one object at the upload's current size. The object exists only
    /// once the whole body arrived, so a failed or abandoned append leaves the size as it was.
    pub(crate) async fn append(
        &self,
        id: &str,
        start: Option<u64>,
        mut body: BodyStream,
    ) -> Result<u64, StorageError> {
        validate_id(id)?;
        let session = self.session(id);
        let mut guard = session.lock().await;
        let objects = self.objects_or_forget(id).await?;
        let size = objects.size();
        if let Some(start) = start.filter(|s| *s != size) {
            return Err(StorageError::OffsetMismatch { expected: start, actual: size });
        }
        let mut hasher = guard.continue_hash(size);
        let chunk_key = self.key(&format!("uploads/{id}/chunk-{size:020}"));
        let mut writer = Writer::new(self.writer(chunk_key));
        let n = self.pump(&mut body, hasher.as_mut(), &mut writer).await?;
        if n == 0 {
            writer.abort().await;
            return Ok(size);
        }
        writer.finish().await.map_err(|e| self.unavailable(e))?;
        let new_size = size + n;
        if let Some(h) = &hasher {
            // Another replica may commit: leave it the digest of everything so far, so that it
            // need not read the chunks back to verify them.
            let digest = h.clone().finish().to_string();
            let key = self.key(&format!("uploads/{id}/hash-{new_size:020}"));
            if let Err(e) = self.s3.put(&key, PutPayload::from(digest.into_bytes())).await {
                tracing::debug!(upload = id, error = %e, "could not record the upload's running digest");
            }
        }
        guard.set_hash(hasher, new_size);
        Ok(new_size)
    }

    /// The digest of the upload's first `size` bytes, if this replica or another recorded it
    /// for `algorithm`.
    async fn known_digest(
        &self,
        session: &Session,
        objects: &UploadObjects,
        size: u64,
        algorithm: Algorithm,
    ) -> Option<Digest> {
        if let Some(h) = session.hash_covering(size).filter(|h| hasher_algorithm(h) == algorithm) {
            return Some(h.clone().finish());
        }
        let path = objects.hashes.get(&size)?;
        let bytes = self.s3.get(path).await.ok()?.bytes().await.ok()?;
        let digest: Digest = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
        (digest.algorithm() == algorithm).then_some(digest)
    }

    /// Streams the chunks in order, hashing them, into `writer` if given.
    async fn stream_chunks(
        &self,
        chunks: &[&Chunk],
        hasher: &mut DigestHasher,
        mut writer: Option<&mut Writer>,
    ) -> Result<(), StorageError> {
        for chunk in chunks {
            let got = self.s3.get(&chunk.path).await.map_err(|e| self.unavailable(e))?;
            let mut stream = got.into_stream();
            while let Some(bytes) = stream.next().await {
                let bytes = bytes.map_err(|e| self.unavailable(e))?;
                hasher.update(&bytes);
                if let Some(w) = writer.as_deref_mut() {
                    w.put(bytes).await.map_err(|e| self.unavailable(e))?;
                }
            }
        }
        Ok(())
    }

    /// Verifies the upload against `expected` and makes it the blob: a copy of its one chunk,
    /// or its chunks streamed into one multipart upload that completes only if they verify.
    pub(crate) async fn commit(&self, id: &str, expected: &Digest) -> Result<u64, StorageError> {
        validate_id(id)?;
        let session = self.session(id);
        let guard = session.lock().await;
        let objects = self.objects_or_forget(id).await?;
        let size = objects.size();
        let data = objects.data_chunks();
        let known = self.known_digest(&guard, &objects, size, expected.algorithm()).await;
        if let Some(actual) = known.as_ref().filter(|a| *a != expected) {
            return Err(StorageError::DigestMismatch { expected: expected.clone(), actual: actual.clone() });
        }
        let dest = self.blob_key(expected);
        if data.len() <= 1 && size <= COPY_MAX {
            if known.is_none() {
                let mut hasher = expected.algorithm().hasher();
                self.stream_chunks(&data, &mut hasher, None).await?;
                let actual = hasher.finish();
                if actual != *expected {
                    return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
                }
            }
            match data.first() {
                Some(chunk) => self.copy(&chunk.path, &dest).await?,
                None => self
                    .s3
                    .put(&dest, PutPayload::new())
                    .await
                    .map(|_| ())
                    .map_err(|e| self.unavailable(e))?,
            }
        } else {
            let mut writer = Writer::new(self.writer(dest));
            let mut hasher = expected.algorithm().hasher();
            if let Err(e) = self.stream_chunks(&data, &mut hasher, Some(&mut writer)).await {
                writer.abort().await;
                return Err(e);
            }
            let actual = hasher.finish();
            if actual != *expected {
                writer.abort().await;
                return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
            }
            writer.finish().await.map_err(|e| self.unavailable(e))?;
        }
        for path in &objects.all {
            if let Err(e) = self.delete_quiet(path).await {
                tracing::warn!(upload = id, error = %e, "could not remove a committed upload's object");
            }
        }
        drop(guard);
        self.forget(id);
        Ok(size)
    }

    pub(crate) async fn cancel(&self, id: &str) -> Result<bool, StorageError> {
        if validate_id(id).is_err() {
            return Ok(false);
        }
        let session = self.session(id);
        let guard = session.lock().await;
        let listed = self.list(&self.upload_prefix(id)).await?;
        for meta in &listed {
            self.delete_quiet(&meta.location).await?;
        }
        drop(guard);
        self.forget(id);
        Ok(!listed.is_empty())
    }

    pub(crate) async fn stale_uploads(&self, older_than: SystemTime) -> Result<Vec<String>, StorageError> {
        let mut newest: BTreeMap<String, SystemTime> = BTreeMap::new();
        for meta in self.list(&self.key("uploads")).await? {
            let parts: Vec<_> = meta.location.parts().collect();
            let [.., id, _] = parts.as_slice() else { continue };
            let id = id.as_ref().to_owned();
            if validate_id(&id).is_err() {
                continue;
            }
            let t = SystemTime::from(meta.last_modified);
            let entry = newest.entry(id).or_insert(t);
            *entry = (*entry).max(t);
        }
        Ok(newest.into_iter().filter(|(_, t)| *t < older_than).map(|(id, _)| id).collect())
    }
}

/// The first `n` bytes of `stream`; the rest is never read (the response is dropped).
fn take_bytes<E>(
    stream: impl futures_util::Stream<Item = Result<Bytes, E>> + Send + 'static,
    n: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, E>> + Send + 'static {
    futures_util::stream::unfold((Box::pin(stream), n), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        match stream.next().await? {
            Ok(mut bytes) => {
                if bytes.len() as u64 > left {
                    bytes.truncate(left as usize);
                }
                let left = left - bytes.len() as u64;
                Some((Ok(bytes), (stream, left)))
            }
            Err(e) => Some((Err(e), (stream, 0))),
        }
    })
}

/// A [`BufWriter`] that aborts its multipart upload when dropped unfinished (a client that went
/// away mid-body), so that no parts are left behind.
struct Writer {
    inner: Option<BufWriter>,
}

impl Writer {
    fn new(inner: BufWriter) -> Writer {
        Writer { inner: Some(inner) }
    }

    async fn put(&mut self, bytes: Bytes) -> object_store::Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.put(bytes).await,
            None => Ok(()),
        }
    }

    async fn finish(&mut self) -> object_store::Result<()> {
        let Some(mut w) = self.inner.take() else { return Ok(()) };
        w.shutdown().await.map_err(|e| object_store::Error::Generic { store: "S3", source: Box::new(e) })
    }

    async fn abort(&mut self) {
        if let Some(mut w) = self.inner.take()
            && let Err(e) = w.abort().await
        {
            tracing::debug!(error = %e, "could not abort a multipart upload");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let Some(mut w) = self.inner.take() else { return };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = w.abort().await;
            });
        }
    }
}
