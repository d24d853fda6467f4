//! Streaming, single-flight fill of blobs from an upstream.
//!
//! One task per missing `(repository, digest)` downloads from the upstream, whoever asked first
//! and however many ask. Each batch it receives goes two ways:
//!
//! - into [`BlobStore::put_stream`] through a bounded channel, which hashes it and publishes the
//!   blob only if the digest matches (then the task links it in the metadata);
//! - into a *spool*, an anonymous temporary file, from which every requester reads at its own
//!   pace, from the first byte, however late it joined.
//!
//! So the fill runs at the pace of the upstream and the store, never at a client's: a slow
//! client does not hold back the others or the store, and memory stays bounded (one batch per
//! stage, one read chunk per client) whatever the blob's size; the price is the spool's disk
//! space until the last reader is done. Readers never receive the last byte of what they asked
//! for before the whole blob has been verified and stored: a wrong hash or a download that breaks
//! off ends every body with an error, so no client can take an unverified transfer for complete.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use wharf_metadata::MetadataStore;
use wharf_oci::{Digest, RepoName};
use wharf_storage::{BlobStore, BodyStream, READ_CHUNK, StorageError};

use crate::upstream::Upstream;

/// Upstream bytes are gathered into batches of up to this size before they are spooled and
/// handed to the store (whatever is ready is flushed at once, so the first byte is not held).
const BATCH: usize = 256 * 1024;
/// Batches queued for the store: the bound on what a fill holds in memory for it.
const STORE_QUEUE: usize = 4;

/// Where one fill stands; every requester watches it.
#[derive(Clone)]
pub(crate) enum FillState {
    /// Asking the upstream.
    Connecting,
    /// Bytes `0..written` of `size` are in the spool.
    Streaming { size: u64, written: u64, spool: Arc<File> },
    /// Verified, stored and linked. `spool` is `None` when nothing was spooled (the blob was
    /// already here, or the upstream gave no length and the blob was stored before serving).
    Done { size: u64, spool: Option<Arc<File>> },
    /// The upstream does not have it, or could not be reached; nothing was sent to anyone.
    Absent,
    /// Broke off or hashed wrong after bytes were sent: readers end with an error.
    Failed(String),
}

type Key = (RepoName, Digest);

/// The fills in flight in this process, by repository and digest.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<Key, watch::Receiver<FillState>>>,
}

impl Flights {
    /// Follow the fill of `key` if one is in flight, else start one: `start` gets the sender and
    /// must see that [`Flights::finish`] is called when it is done.
    pub(crate) fn join_or_start(
        &self,
        key: &Key,
        start: impl FnOnce(watch::Sender<FillState>),
    ) -> watch::Receiver<FillState> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // A fill whose task went away without finishing (it panicked) is replaced.
        if let Some(rx) = map.get(key)
            && rx.has_changed().is_ok()
        {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(FillState::Connecting);
        map.insert(key.clone(), rx.clone());
        drop(map);
        start(tx);
        rx
    }

    /// Forget the fill of `key` that `tx` drives (after its final state was sent): later
    /// requests find the blob in the store.
    pub(crate) fn finish(&self, key: &Key, tx: &watch::Sender<FillState>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|rx| rx.same_channel(&tx.subscribe())) {
            map.remove(key);
        }
    }
}

/// What a fill needs from the registry.
pub(crate) struct FillJob {
    pub blobs: BlobStore,
    pub meta: MetadataStore,
    pub upstream: Arc<dyn Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
    pub spool_dir: Option<PathBuf>,
}

/// Download, spool, store, verify, link; report every step through `tx`.
pub(crate) async fn run(job: FillJob, tx: &watch::Sender<FillState>) {
    let FillJob { repo, digest, .. } = &job;
    let describe = job.upstream.describe();
    let final_state = match fetch(&job, tx).await {
        Ok(state) => state,
        Err(Failure::Absent(why)) => {
            if let Some(why) = why {
                tracing::warn!(%repo, %digest, upstream = %describe, error = %why, "on-demand fill failed");
            }
            FillState::Absent
        }
        Err(Failure::Broken(why)) => {
            tracing::warn!(%repo, %digest, upstream = %describe, error = %why, "on-demand fill broke off; nothing stored");
            FillState::Failed(why)
        }
    };
    if let FillState::Done { size, .. } = &final_state {
        tracing::info!(%repo, %digest, size, upstream = %describe, "filled blob from upstream");
    }
    tx.send_replace(final_state);
}

enum Failure {
    /// Before any byte went out; `Some` carries a reason worth logging.
    Absent(Option<String>),
    /// After bytes went out.
    Broken(String),
}

async fn fetch(job: &FillJob, tx: &watch::Sender<FillState>) -> Result<FillState, Failure> {
    let absent = |e: String| Failure::Absent(Some(e));
    // Someone may have finished this fill between the caller's look-up and this task's start.
    if let Some(size) =
        job.meta.linked_blob_size(&job.repo, &job.digest).await.map_err(|e| absent(e.to_string()))?
    {
        return Ok(FillState::Done { size, spool: None });
    }
    let blob = match job.upstream.blob(&job.repo, &job.digest).await {
        Ok(Some(blob)) => blob,
        Ok(None) => return Err(Failure::Absent(None)),
        Err(e) => return Err(absent(e)),
    };
    let Some(size) = blob.size else {
        // No length to promise a client: store first, then serve from the store.
        let size = job.blobs.put_stream(&job.digest, blob.body).await.map_err(|e| absent(e.to_string()))?;
        link(job, size).await.map_err(absent)?;
        return Ok(FillState::Done { size, spool: None });
    };
    let spool = spool_file(job.spool_dir.clone())
        .await
        .map_err(|e| absent(format!("creating the spool file: {e}")))?;
    tx.send_replace(FillState::Streaming { size, written: 0, spool: spool.clone() });

    let (store_tx, store_rx) = mpsc::channel::<std::io::Result<Bytes>>(STORE_QUEUE);
    let store = {
        let (blobs, digest) = (job.blobs.clone(), job.digest.clone());
        let body: BodyStream = Box::pin(futures_util::stream::unfold(store_rx, |mut rx| async {
            rx.recv().await.map(|c| (c, rx))
        }));
        tokio::spawn(async move { blobs.put_stream(&digest, body).await })
    };
    let pumped = pump(blob.body, size, &spool, &store_tx, tx).await;
    if let Err(e) = &pumped {
        // Make sure the store throws its temporary file away rather than verifying a prefix.
        let _ = store_tx.send(Err(std::io::Error::other(e.clone()))).await;
    }
    drop(store_tx);
    let stored = match store.await {
        Ok(r) => r,
        Err(e) => Err(StorageError::Body(format!("store task: {e}"))),
    };
    let stored = stored.map_err(|e| match e {
        StorageError::DigestMismatch { expected, actual } => {
            Failure::Broken(format!("upstream content hashes to {actual}, not to {expected}"))
        }
        StorageError::Io(e) => {
            tracing::error!(digest = %job.digest, error = %e, "storage failed during an on-demand fill");
            Failure::Broken(format!("storage: {e}"))
        }
        other => Failure::Broken(other.to_string()),
    });
    // Which side failed first: the upstream (then the store only saw the error passed on) or
    // the store (then the pump only saw it stop reading).
    let written = match (pumped, stored) {
        (Ok(written), Ok(stored)) if written == stored => written,
        (Ok(written), Ok(stored)) => {
            return Err(Failure::Broken(format!("received {written} bytes but stored {stored}")));
        }
        // The store stopped first: its own error says why.
        (Err(e), Err(store)) if e == STORE_STOPPED => return Err(store),
        (Err(e), _) => return Err(Failure::Broken(e)),
        (Ok(_), Err(store)) => return Err(store),
    };
    if written != size {
        return Err(Failure::Broken(format!("upstream sent {written} bytes but announced {size}")));
    }
    link(job, size).await.map_err(Failure::Broken)?;
    Ok(FillState::Done { size, spool: Some(spool) })
}

async fn link(job: &FillJob, size: u64) -> Result<(), String> {
    job.meta.link_blob(&job.repo, &job.digest, size).await.map_err(|e| format!("linking the blob: {e}"))
}

async fn spool_file(dir: Option<PathBuf>) -> std::io::Result<Arc<File>> {
    let file = tokio::task::spawn_blocking(move || match dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(Arc::new(file))
}

const STORE_STOPPED: &str = "the store stopped reading";

/// Copy the upstream body into the spool and the store, batch by batch; returns the byte count.
async fn pump(
    mut body: BodyStream,
    size: u64,
    spool: &Arc<File>,
    store: &mpsc::Sender<std::io::Result<Bytes>>,
    tx: &watch::Sender<FillState>,
) -> Result<u64, String> {
    let mut written = 0u64;
    let mut batch = BytesMut::new();
    let mut ended = false;
    while !ended {
        match body.next().await {
            None => break,
            Some(chunk) => batch.extend_from_slice(&chunk.map_err(|e| format!("upstream body: {e}"))?),
        }
        // Take what is already there without waiting, so a batch is never held back.
        while batch.len() < BATCH {
            match body.next().now_or_never() {
                Some(Some(chunk)) => {
                    batch.extend_from_slice(&chunk.map_err(|e| format!("upstream body: {e}"))?)
                }
                Some(None) => {
                    ended = true;
                    break;
                }
                None => break,
            }
        }
        let chunk = batch.split().freeze();
        let len = chunk.len() as u64;
        if written + len > size {
            return Err(format!("upstream sent more than the {size} bytes it announced"));
        }
        let (file, at, data) = (spool.clone(), written, chunk.clone());
        tokio::task::spawn_blocking(move || file.write_all_at(&data, at))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("writing the spool: {e}"))?;
        store.send(Ok(chunk)).await.map_err(|_| STORE_STOPPED.to_owned())?;
        written += len;
        tx.send_modify(|s| {
            if let FillState::Streaming { written: w, .. } = s {
                *w = written;
            }
        });
    }
    Ok(written)
}

/// Bytes `start..start + len` of the blob a fill is bringing in, as they arrive. The last byte
/// comes only once the blob is verified and stored; if the fill fails, the stream ends with an
/// error instead.
pub(crate) fn follow(rx: watch::Receiver<FillState>, start: u64, len: u64) -> BodyStream {
    struct Reader {
        rx: watch::Receiver<FillState>,
        pos: u64,
        end: u64,
        over: bool,
    }
    let reader = Reader { rx, pos: start, end: start + len, over: false };
    Box::pin(futures_util::stream::unfold(reader, |mut r| async move {
        if r.over || r.pos >= r.end {
            return None;
        }
        loop {
            let state = r.rx.borrow_and_update().clone();
            let (avail, spool) = match state {
                FillState::Connecting => (0, None),
                // Everything but the last byte asked for: that one waits for verification.
                FillState::Streaming { written, spool, .. } => (written.min(r.end - 1), Some(spool)),
                FillState::Done { spool: Some(spool), .. } => (r.end, Some(spool)),
                FillState::Done { spool: None, .. } | FillState::Absent => {
                    r.over = true;
                    return Some((Err(std::io::Error::other("the fill ended without its bytes")), r));
                }
                FillState::Failed(why) => {
                    r.over = true;
                    let e = std::io::Error::other(format!("on-demand fill failed: {why}"));
                    return Some((Err(e), r));
                }
            };
            if let Some(spool) = spool
                && avail > r.pos
            {
                let (at, n) = (r.pos, (avail - r.pos).min(READ_CHUNK as u64) as usize);
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; n];
                    spool.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|read| read);
                return Some(match read {
                    Ok(bytes) => {
                        r.pos += n as u64;
                        (Ok(bytes), r)
                    }
                    Err(e) => {
                        r.over = true;
                        (Err(e), r)
                    }
                });
            }
            // The fill's task is gone: its final state is what `borrow` shows now, and only a
            // finished or failed fill has anything more to say (the next round says it).
            if r.rx.changed().await.is_err()
                && !matches!(&*r.rx.borrow(), FillState::Done { .. } | FillState::Failed(_))
            {
                r.over = true;
                return Some((Err(std::io::Error::other("the fill stopped")), r));
            }
        }
    }))
}
