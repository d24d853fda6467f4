//! Streaming a body to disk: batched writes through the blocking pool, undone unless finished.

use std::fs::{File as StdFile, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;
use wharf_oci::DigestHasher;

use crate::fs::start_writeback;
use crate::upload::Session;
use crate::{BodyStream, StorageError, WRITE_BATCH};

/// Read `body` to the end, hashing each chunk and handing it to `spool`. Returns the byte count.
pub(crate) async fn pump(
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
pub(crate) enum Cleanup {
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
pub(crate) struct Spool {
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
    pub(crate) fn new(
        file: StdFile,
        pos: u64,
        cleanup: Cleanup,
        guard: Option<OwnedMutexGuard<Session>>,
    ) -> Self {
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
    pub(crate) async fn finish(mut self) -> io::Result<(StdFile, Option<OwnedMutexGuard<Session>>)> {
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
    pub(crate) async fn abort(mut self) {
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
