//! Durable-write helpers: installing verified content, directory fsync, mtime updates,
//! write-back hints, temporary-file cleanup, and running blocking work off the runtime.

use std::fs::{File as StdFile, OpenOptions};
use std::io;
use std::path::Path;
use std::time::SystemTime;

use wharf_oci::Digest;

use crate::store::Inner;
use crate::{StorageError, TMP_MAX_AGE};

impl Inner {
    /// Make the verified content at `src` (open as `file`) the blob `d`: fsync, rename, fsync
    /// the directory. If the blob already exists, `src` is removed instead. Blocking.
    pub(crate) fn install(&self, src: &Path, file: &StdFile, d: &Digest) -> io::Result<()> {
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
pub(crate) fn touch_file(path: &Path) -> io::Result<u64> {
    let file = OpenOptions::new().append(true).open(path)?;
    file.set_modified(SystemTime::now())?;
    Ok(file.metadata()?.len())
}

/// fsync a directory so a rename in it is durable. Best effort.
fn sync_dir(dir: &Path) {
    if let Err(e) = StdFile::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), error = %e, "directory fsync failed");
    }
}

pub(crate) fn remove_dir_all_quiet(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(crate) fn read_dir_if_exists(
    dir: &Path,
) -> io::Result<Box<dyn Iterator<Item = io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => Ok(Box::new(rd)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

/// Remove temporary files a crash left behind. Best effort.
pub(crate) fn sweep_tmp(tmp: &Path) {
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
pub(crate) fn start_writeback(file: &StdFile, offset: u64, len: u64) {
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
pub(crate) fn start_writeback(_file: &StdFile, _offset: u64, _len: u64) {}

/// Run blocking filesystem work on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::Io(io::Error::other(e))),
    }
}
