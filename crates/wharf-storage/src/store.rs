//! The blob store itself: opening, looking up, reading, writing and listing committed blobs.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File as StdFile, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as SyncMutex};

use bytes::Bytes;
use tokio::sync::Mutex;
use uuid::Uuid;
use wharf_oci::{Algorithm, Digest};

use crate::fs::{blocking, read_dir_if_exists, sweep_tmp, touch_file};
use crate::read::read_file;
use crate::small::{SMALL_BLOB, read_bytes};
use crate::spool::{Cleanup, Spool, pump};
use crate::upload::Session;
use crate::{BlobRead, BodyStream, StorageError};

/// A blob opened for reading: small ones come back whole.
enum Opened {
    Whole(Bytes),
    File(StdFile, u64),
}

/// Filesystem blob store. Cheap to clone; clones share upload-session state.
#[derive(Clone)]
pub struct FsStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) blobs: PathBuf,
    pub(crate) uploads: PathBuf,
    pub(crate) tmp: PathBuf,
    /// Per-upload lock and incremental hash state. An entry exists only while this process has
    /// touched the upload; after a restart the hash state is gone and commit re-hashes the file.
    pub(crate) sessions: SyncMutex<HashMap<String, Arc<Mutex<Session>>>>,
}

impl fmt::Debug for FsStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsStore").field("root", &self.inner.root).finish()
    }
}

impl FsStore {
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
        Ok(FsStore { inner: Arc::new(inner) })
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

    /// Where blob `d` lives on disk (whether or not it is there): for maintenance that moves
    /// files itself, such as garbage collection's trash.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner.blob_path(d)
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
            Ok(mut f) => {
                let size = f.metadata()?.len();
                // A whole small blob is read in this same trip to the blocking pool.
                if range.is_none() && size <= SMALL_BLOB {
                    let mut content = Vec::with_capacity(size as usize);
                    (&mut f).take(size).read_to_end(&mut content)?;
                    return Ok(Some(Opened::Whole(Bytes::from(content))));
                }
                Ok(Some(Opened::File(f, size)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?;
        let (file, size) = match opened {
            None => return Ok(None),
            Some(Opened::Whole(content)) => return Ok(Some(read_bytes(content, None))),
            Some(Opened::File(file, size)) => (file, size),
        };
        let (start, len) = match range {
            None => (0, size),
            Some((first, last)) => {
                let last = last.min(size.saturating_sub(1));
                if size == 0 || first > last { (first, 0) } else { (first, last - first + 1) }
            }
        };
        let body = read_file(file, start, len);
        Ok(Some(BlobRead { size, start, len, body }))
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
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.blobs.join(d.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(Uuid::new_v4().hyphenated().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn futures_are_send() {
        fn check(store: FsStore, d: Digest, body: BodyStream) {
            assert_send(&store.put_stream(&d, body));
            let body: BodyStream = Box::pin(futures_util::stream::empty());
            assert_send(&store.append("x", None, body));
            assert_send(&store.commit("x", &d));
            assert_send(&store.read(&d, None));
        }
        let _ = check;
        fn sync<T: Send + Sync + Clone>() {}
        sync::<FsStore>();
    }
}
