//! Resumable upload sessions: their files under `uploads/` and their in-memory hash state.

use std::collections::HashMap;
use std::fs::{File as StdFile, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Mutex;
use uuid::Uuid;
use wharf_oci::{Algorithm, Digest, DigestHasher};

use crate::fs::{blocking, remove_dir_all_quiet};
use crate::spool::{Cleanup, Spool, pump};
use crate::store::{FsStore, Inner};
use crate::{BodyStream, HASH_BUF, StorageError};

#[derive(Default)]
pub(crate) struct Session {
    /// Hash of the first `.1` bytes of the upload's data.
    hasher: Option<(DigestHasher, u64)>,
}

impl Session {
    /// A new upload: nothing received, sha256 until a commit says otherwise.
    pub(crate) fn fresh() -> Session {
        Session { hasher: Some((Algorithm::Sha256.hasher(), 0)) }
    }

    /// The hash state, if it covers exactly the first `size` bytes.
    pub(crate) fn hash_covering(&self, size: u64) -> Option<&DigestHasher> {
        match &self.hasher {
            Some((h, covered)) if *covered == size => Some(h),
            _ => None,
        }
    }

    /// A copy of the hash state to continue after `size` bytes, if it covers exactly those.
    pub(crate) fn continue_hash(&self, size: u64) -> Option<DigestHasher> {
        self.hash_covering(size).cloned()
    }

    /// Record the hash state after an append (`None`: unknown, commit re-hashes).
    pub(crate) fn set_hash(&mut self, hasher: Option<DigestHasher>, size: u64) {
        self.hasher = hasher.map(|h| (h, size));
    }
}

impl FsStore {
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
        let session = Session::fresh();
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
        let mut hasher = guard.continue_hash(size);
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
            guard.set_hash(hasher, new_size);
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
            let actual =
                match guard.hash_covering(size).filter(|h| hasher_algorithm(h) == expected.algorithm()) {
                    Some(h) => h.clone().finish(),
                    None => rehash(&file, expected.algorithm())?,
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
}

impl Inner {
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
}

pub(crate) fn validate_id(id: &str) -> Result<(), StorageError> {
    match Uuid::try_parse(id) {
        Ok(u) if u.hyphenated().to_string() == id => Ok(()),
        _ => Err(StorageError::UploadUnknown(id.chars().take(80).collect())),
    }
}

pub(crate) fn hasher_algorithm(h: &DigestHasher) -> Algorithm {
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

#[cfg(test)]
mod tests {
    use super::*;

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
