//! Streaming, single-flight fill of blobs from an upstream.
//!
//! One task per missing `(repository, digest)` downloads from the upstream, whoever asked first
//! and however many ask. Each batch it receives goes two ways:
//!
//! - into [`BlobStore::put_stream`] through a bounded channel, which hashes it and publishes the
//!   blob only if the digest matches (then the task links it in the metadata);
//! - into a *ring* in memory holding the last [`WINDOW`] bytes, from which every requester
//!   reads as the bytes arrive.
//!
//! The fill runs at the pace of the upstream and the store, never at a client's: a requester
//! that falls more than [`WINDOW`] behind (a slow client, or one that joined late) stops
//! streaming from the ring, waits for the verified blob and reads the rest from the store. So
//! memory stays bounded per fill whatever the blob's size, no byte is written twice, and a slow
//! client holds back nobody. Readers never receive the last byte of what they asked for before
//! the whole blob has been verified and stored: a wrong hash or a download that breaks off ends
//! every body with an error, so no client can take an unverified transfer for complete.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};
use wharf_metadata::MetadataStore;
use wharf_oci::{Digest, RepoName};
use wharf_storage::{BlobStore, BodyStream, StorageError};

use crate::upstream::Upstream;

/// Upstream bytes are gathered into batches of up to this size for the ring and the store
/// (whatever is ready is taken at once, so the first byte is not held back).
const BATCH: usize = 256 * 1024;
/// Batches queued for the store: the bound on what a fill holds in memory for it.
const STORE_QUEUE: usize = 4;
/// Bytes of a fill kept in memory for the requesters streaming it.
pub(crate) const WINDOW: usize = 16 << 20;

/// The last bytes a fill received, by offset in the blob.
#[derive(Default)]
pub(crate) struct Ring {
    /// Offset of the first byte held.
    start: u64,
    chunks: VecDeque<Bytes>,
    len: usize,
}

/// A reader asked for bytes the ring no longer holds.
struct Behind;

impl Ring {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
        while self.len > WINDOW && self.chunks.len() > 1 {
            if let Some(old) = self.chunks.pop_front() {
                self.start += old.len() as u64;
                self.len -= old.len();
            }
        }
    }

    /// Bytes from `pos` up to (not including) `until`, from one chunk; `None` if none yet.
    fn read(&self, pos: u64, until: u64) -> Result<Option<Bytes>, Behind> {
        if pos < self.start {
            return Err(Behind);
        }
        let mut at = self.start;
        for chunk in &self.chunks {
            let end = at + chunk.len() as u64;
            if pos < end {
                let (from, to) = ((pos - at) as usize, (until.min(end).saturating_sub(at)) as usize);
                return Ok((to > from).then(|| chunk.slice(from..to)));
            }
            at = end;
        }
        Ok(None)
    }
}

type Shared = Arc<Mutex<Ring>>;

fn lock(ring: &Shared) -> std::sync::MutexGuard<'_, Ring> {
    ring.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where one fill stands; every requester watches it.
#[derive(Clone)]
pub(crate) enum FillState {
    /// Asking the upstream.
    Connecting,
    /// Bytes `0..written` of `size` have arrived; the last [`WINDOW`] of them are in `ring`.
    Streaming { size: u64, written: u64, ring: Shared },
    /// Verified, stored and linked. `ring` is `None` when nothing was streamed (the blob was
    /// already here, or the upstream gave no length and the blob was stored before serving).
    Done { size: u64, ring: Option<Shared> },
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
}

/// Download, stream, store, verify, link; report every step through `tx`.
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
        return Ok(FillState::Done { size, ring: None });
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
        return Ok(FillState::Done { size, ring: None });
    };
    let ring = Shared::default();
    tx.send_replace(FillState::Streaming { size, written: 0, ring: ring.clone() });

    let (store_tx, store_rx) = mpsc::channel::<std::io::Result<Bytes>>(STORE_QUEUE);
    let store = {
        let (blobs, digest) = (job.blobs.clone(), job.digest.clone());
        let body: BodyStream = Box::pin(futures_util::stream::unfold(store_rx, |mut rx| async {
            rx.recv().await.map(|c| (c, rx))
        }));
        tokio::spawn(async move { blobs.put_stream(&digest, body).await })
    };
    let pumped = pump(blob.body, size, &ring, &store_tx, tx).await;
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
    Ok(FillState::Done { size, ring: Some(ring) })
}

async fn link(job: &FillJob, size: u64) -> Result<(), String> {
    job.meta.link_blob(&job.repo, &job.digest, size).await.map_err(|e| format!("linking the blob: {e}"))
}

const STORE_STOPPED: &str = "the store stopped reading";

/// Copy the upstream body into the ring and the store, batch by batch; returns the byte count.
async fn pump(
    mut body: BodyStream,
    size: u64,
    ring: &Shared,
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
        lock(ring).push(chunk.clone());
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

/// Bytes `start..start + len` of the blob a fill is bringing in, as they arrive (from the
/// ring, or from the store once the blob is in and the ring has moved past). The last byte
/// comes only once the blob is verified and stored; if the fill fails, the stream ends with an
/// error instead.
pub(crate) fn follow(
    rx: watch::Receiver<FillState>,
    blobs: BlobStore,
    digest: Digest,
    start: u64,
    len: u64,
) -> BodyStream {
    struct Reader {
        rx: watch::Receiver<FillState>,
        blobs: BlobStore,
        digest: Digest,
        pos: u64,
        end: u64,
        over: bool,
        from_store: Option<BodyStream>,
    }
    fn fail(mut r: Reader, e: std::io::Error) -> Option<(std::io::Result<Bytes>, Reader)> {
        r.over = true;
        Some((Err(e), r))
    }
    let reader = Reader { rx, blobs, digest, pos: start, end: start + len, over: false, from_store: None };
    Box::pin(futures_util::stream::unfold(reader, |mut r| async move {
        if r.over || r.pos >= r.end {
            return None;
        }
        loop {
            if let Some(body) = &mut r.from_store {
                return match body.next().await {
                    Some(Ok(bytes)) => {
                        r.pos += bytes.len() as u64;
                        Some((Ok(bytes), r))
                    }
                    Some(Err(e)) => fail(r, e),
                    None => fail(r, std::io::Error::other("the stored blob ended early")),
                };
            }
            let state = r.rx.borrow_and_update().clone();
            match state {
                FillState::Connecting => {}
                FillState::Streaming { written, ring, .. } => {
                    // Everything but the last byte asked for: that one waits for verification.
                    // A reader the ring has left behind waits for the stored blob.
                    if let Ok(Some(bytes)) = lock(&ring).read(r.pos, written.min(r.end - 1)) {
                        r.pos += bytes.len() as u64;
                        return Some((Ok(bytes), r));
                    }
                }
                FillState::Done { ring, .. } => {
                    if let Some(ring) = ring
                        && let Ok(Some(bytes)) = lock(&ring).read(r.pos, r.end)
                    {
                        r.pos += bytes.len() as u64;
                        return Some((Ok(bytes), r));
                    }
                    match r.blobs.read(&r.digest, Some((r.pos, r.end - 1))).await {
                        Ok(Some(read)) => r.from_store = Some(read.body),
                        Ok(None) => {
                            return fail(r, std::io::Error::other("the filled blob is gone from storage"));
                        }
                        Err(e) => return fail(r, std::io::Error::other(e.to_string())),
                    }
                    continue;
                }
                FillState::Absent => {
                    return fail(r, std::io::Error::other("the fill ended without its bytes"));
                }
                FillState::Failed(why) => {
                    return fail(r, std::io::Error::other(format!("on-demand fill failed: {why}")));
                }
            }
            // The fill's task is gone: its final state is what `borrow` shows now, and only a
            // finished or failed fill has anything more to say (the next round says it).
            if r.rx.changed().await.is_err()
                && !matches!(&*r.rx.borrow(), FillState::Done { .. } | FillState::Failed(_))
            {
                return fail(r, std::io::Error::other("the fill stopped"));
            }
        }
    }))
}
