//! What garbage collection needs of the filesystem store: a blob's age, and a trash where a
//! blob waits between the sweep's transaction and its removal (see `wharf-registry`'s gc).

use std::io;
use std::path::PathBuf;

use wharf_oci::Digest;

use crate::store::FsStore;
use crate::{BlobAge, StorageError};

/// Where trashed blobs wait, under the storage root.
const TRASH_DIR: &str = "gc-trash";

impl FsStore {
    /// Size and modification time of a blob (the time it was written or last touched).
    pub(crate) async fn blob_age(&self, d: &Digest) -> Result<Option<BlobAge>, StorageError> {
        match tokio::fs::metadata(self.blob_path(d)).await {
            Ok(m) if m.is_file() => Ok(Some(BlobAge { size: m.len(), modified: m.modified()? })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn trash_path(&self, d: &Digest) -> PathBuf {
        self.root().join(TRASH_DIR).join(d.tag_form())
    }

    /// Moves a blob into the trash (one rename). Returns its size and age; `None` if absent.
    pub(crate) async fn trash(&self, d: &Digest) -> Result<Option<BlobAge>, StorageError> {
        let trash = self.trash_path(d);
        if let Some(dir) = trash.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        match tokio::fs::rename(self.blob_path(d), &trash).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let m = tokio::fs::metadata(&trash).await?;
        Ok(Some(BlobAge { size: m.len(), modified: m.modified()? }))
    }

    /// Moves a trashed blob back, unless the blob was stored again meanwhile (same digest,
    /// same bytes): then the trashed copy just goes.
    pub(crate) async fn restore(&self, d: &Digest) -> Result<(), StorageError> {
        let (trash, dest) = (self.trash_path(d), self.blob_path(d));
        if tokio::fs::try_exists(&dest).await? {
            return self.purge(d).await;
        }
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        match tokio::fs::rename(&trash, &dest).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Removes a trashed blob for good.
    pub(crate) async fn purge(&self, d: &Digest) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.trash_path(d)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Blobs in the trash (left there by a run that crashed).
    pub(crate) async fn list_trash(&self) -> Result<Vec<Digest>, StorageError> {
        let mut entries = match tokio::fs::read_dir(self.root().join(TRASH_DIR)).await {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut found = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            if let Some(d) = entry.file_name().to_str().and_then(Digest::from_tag_form) {
                found.push(d);
            }
        }
        found.sort();
        Ok(found)
    }
}
