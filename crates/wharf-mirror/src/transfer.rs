//! Moving manifests and their blobs: blobs in parallel (skip what the destination has, mount
//! what it has elsewhere, else stream verified), then manifests, children before parents.
//!
//! Every request counts when hundreds of images are mirrored, so what the destination holds
//! is asked as seldom as possible: an image manifest it has needs none of its blobs checked
//! (a registry accepts a manifest only once it holds the blobs; a layout writes them first),
//! and once a mount has worked at a registry, "has it?" and "start an upload" are one request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use wharf_client::{BlobOpener, ByteStream, ClientError, Mounted, RawManifest};
use wharf_oci::{Descriptor, Reference, media_types};

use crate::endpoint::Endpoint;
use crate::job::{Job, parse_manifest};
use crate::stream::reporting;
use crate::{BlobOutcome, MirrorError, Progress};

/// What one or more manifests need at the destination.
#[derive(Default)]
pub(crate) struct Tree {
    /// In push order: the children of an index before the index.
    pub manifests: Vec<RawManifest>,
    pub blobs: Vec<Descriptor>,
    /// Manifests already found absent at the destination: pushed without asking again.
    pub absent: HashSet<wharf_oci::Digest>,
}

impl Job<'_> {
    /// Fetch a manifest from the source by digest; absent is an error naming it.
    pub(crate) async fn fetch(&self, desc: &Descriptor) -> Result<RawManifest, MirrorError> {
        self.fetch_if_present(desc).await?.ok_or_else(|| {
            MirrorError::NotFound(format!("manifest {} not found in {}", desc.digest, self.src.describe()))
        })
    }

    /// Fetch a manifest from the source by digest; `None` when the source does not hold it.
    pub(crate) async fn fetch_if_present(
        &self,
        desc: &Descriptor,
    ) -> Result<Option<RawManifest>, MirrorError> {
        let Some(mut m) = self.src.get_manifest(Some(&Reference::Digest(desc.digest.clone()))).await? else {
            return Ok(None);
        };
        // A layout knows a child's media type only from the descriptor that points at it.
        if matches!(self.src, Endpoint::Layout(_)) && media_types::is_manifest(&desc.media_type) {
            m.media_type = desc.media_type.clone();
        }
        Ok(Some(m))
    }

    /// Add `m` and everything it references (nested indexes whole) to `tree`.
    pub(crate) async fn gather(&self, m: RawManifest, tree: &mut Tree) -> Result<(), MirrorError> {
        let parsed = parse_manifest(&m, &self.src)?;
        if parsed.is_index() {
            for child in parsed.children() {
                let raw = self.fetch(child).await?;
                Box::pin(self.gather(raw, tree)).await?;
            }
        } else {
            for blob in parsed.blobs() {
                // Foreign layers live at their `urls`, not in registries.
                if media_types::is_foreign_layer(&blob.media_type) && blob.urls.is_some() {
                    continue;
                }
                tree.blobs.push(blob.clone());
            }
        }
        tree.manifests.push(m);
        Ok(())
    }

    /// Add to `tree` what the destination lacks of `manifests`: an image manifest it holds is
    /// counted as there with its blobs, which are recorded for later mounts; the others are
    /// gathered whole (a nested index always: a sparse one does not hold all it lists).
    pub(crate) async fn gather_missing(
        &self,
        manifests: Vec<RawManifest>,
        tree: &mut Tree,
    ) -> Result<(), MirrorError> {
        let held: Vec<bool> = futures_util::stream::iter(manifests.iter().map(|m| async move {
            if media_types::is_index(&m.media_type) {
                return Ok(false);
            }
            self.dest_has_manifest(&m.digest).await
        }))
        .buffered(self.jobs())
        .try_collect()
        .await?;
        let mut there: HashMap<wharf_oci::Digest, u64> = HashMap::new();
        let store = self.dst.store_key();
        for (m, held) in manifests.into_iter().zip(held) {
            if !held {
                tree.absent.insert(m.digest.clone());
                self.gather(m, tree).await?;
                continue;
            }
            self.add_existing(m.bytes.len() as u64);
            for blob in parse_manifest(&m, &self.src)?.blobs() {
                if !(media_types::is_foreign_layer(&blob.media_type) && blob.urls.is_some()) {
                    there.insert(blob.digest.clone(), blob.size);
                }
            }
        }
        tree.blobs.retain(|b| !there.contains_key(&b.digest));
        for (digest, size) in there {
            self.ledger().record(&store, &digest, self.dst.repo());
            self.add_existing(size);
            self.progress().blob_done(&digest, BlobOutcome::Existing);
        }
        Ok(())
    }

    /// Blobs (parallel, bounded by `jobs`), then manifests in order, skipping what is there.
    pub(crate) async fn transfer(&self, tree: Tree) -> Result<(), MirrorError> {
        let mut seen = HashSet::new();
        let blobs: Vec<Descriptor> =
            tree.blobs.into_iter().filter(|b| seen.insert(b.digest.clone())).collect();
        futures_util::stream::iter(blobs.iter().map(|b| self.copy_blob(b)))
            .buffer_unordered(self.jobs())
            .try_collect::<()>()
            .await?;
        let mut done = HashSet::new();
        for m in tree.manifests {
            if done.insert(m.digest.clone()) {
                self.copy_manifest(&m, tree.absent.contains(&m.digest)).await?;
            }
        }
        Ok(())
    }

    /// Push a manifest by digest unless the destination has it (`known_absent`: it was just
    /// asked and had not).
    pub(crate) async fn copy_manifest(&self, m: &RawManifest, known_absent: bool) -> Result<(), MirrorError> {
        let size = m.bytes.len() as u64;
        if !known_absent && self.dest_has_manifest(&m.digest).await? {
            self.add_existing(size);
            return Ok(());
        }
        if self.dry_run() {
            self.plan_manifest(&m.digest);
        } else {
            self.dst.put_manifest(m, None).await?;
            self.pushed.lock().expect("not poisoned").insert(m.digest.clone());
        }
        self.add_copied(size);
        Ok(())
    }

    async fn copy_blob(&self, blob: &Descriptor) -> Result<(), MirrorError> {
        let digest = &blob.digest;
        let store = self.dst.store_key();
        let repo = self.dst.repo().cloned();
        let progress = self.progress().clone();
        let _turn = self.ledger().turn(&store, digest).await;
        let holders = self.ledger().holders(&store, digest);
        if holders.contains(&repo) {
            self.add_existing(blob.size);
            progress.blob_done(digest, BlobOutcome::Existing);
            return Ok(());
        }
        // Once a mount has worked at this registry, a mount from the repository itself asks
        // whether it holds the blob and opens the upload if not, in one request (below);
        // until then, ask first.
        let probe = !self.dry_run() && self.ledger().mounts_work(&store);
        if !probe && self.dst.blob_size(digest).await?.is_some() {
            self.ledger().record(&store, digest, repo.as_ref());
            self.add_existing(blob.size);
            progress.blob_done(digest, BlobOutcome::Existing);
            return Ok(());
        }
        // Repositories of the destination registry to mount from: the source repository when
        // source and destination are the same registry (a promotion), then those that got
        // the blob earlier in this run.
        let same_registry = (self.src.store_key() == store).then(|| self.src.repo().cloned()).flatten();
        let mut mount_from: Vec<&wharf_oci::RepoName> = same_registry
            .iter()
            .chain(holders.iter().flatten())
            .filter(|r| Some(*r) != repo.as_ref())
            .collect();
        if self.dry_run() {
            // Planned as a copy would go: mounted where it can be, else sent; recorded so that
            // later plans of the run find it.
            self.ledger().record(&store, digest, repo.as_ref());
            if mount_from.is_empty() {
                self.add_copied(blob.size)
            } else {
                self.add_existing(blob.size)
            }
            return Ok(());
        }
        if probe && mount_from.is_empty() {
            mount_from.extend(repo.as_ref());
        }
        let mut session = None;
        let last = mount_from.len().saturating_sub(1);
        for (i, from) in mount_from.into_iter().enumerate() {
            // The last try keeps the upload session a refused mount opens.
            let tried = if i == last {
                self.dst.mount_or_start(digest, from).await
            } else {
                self.dst.mount(digest, from).await.map(|m| if m { Some(Mounted::Yes) } else { None })
            };
            match tried {
                Ok(Some(Mounted::Yes)) => {
                    self.ledger().record(&store, digest, repo.as_ref());
                    self.add_existing(blob.size);
                    if Some(from) == repo.as_ref() {
                        progress.blob_done(digest, BlobOutcome::Existing);
                    } else {
                        self.ledger().note_mount_works(&store);
                        progress.blob_done(digest, BlobOutcome::Mounted);
                    }
                    return Ok(());
                }
                Ok(Some(Mounted::No(s))) => session = Some(s),
                Ok(None) => {}
                // A refused mount is no reason to fail: the blob is copied instead.
                Err(e) => tracing::debug!(%digest, error = %e, "mount failed; copying"),
            }
        }
        progress.blob_started(digest, blob.size);
        let opener = source_opener(self.src.clone(), blob.clone(), progress.clone());
        if let Err(e) = self.dst.put_blob(digest, blob.size, opener, session).await {
            progress.blob_done(digest, BlobOutcome::Failed);
            return Err(e);
        }
        self.ledger().record(&store, digest, repo.as_ref());
        self.add_copied(blob.size);
        progress.blob_done(digest, BlobOutcome::Copied(blob.size));
        Ok(())
    }
}

/// Opens the source blob at an offset (so an upload can resume), checking its size; from
/// offset 0 the stream is verified against the digest as it flows.
fn source_opener(src: Endpoint, blob: Descriptor, progress: Arc<dyn Progress>) -> BlobOpener {
    Box::new(move |offset| {
        let (src, blob, progress) = (src.clone(), blob.clone(), progress.clone());
        Box::pin(async move {
            let (size, stream): (u64, ByteStream) = src.open_blob(&blob.digest, offset).await?;
            if size != blob.size {
                return Err(ClientError::Invalid(format!(
                    "blob {} is {size} bytes at the source, but its descriptor says {}",
                    blob.digest, blob.size
                )));
            }
            Ok(reporting(stream, blob.digest.clone(), progress))
        })
    })
}

/// Sum of a manifest's own size and its blobs (for `bytes_filtered`).
pub(crate) fn manifest_footprint(m: &RawManifest, blobs: &[&Descriptor]) -> u64 {
    m.bytes.len() as u64 + blobs.iter().map(|b| b.size).sum::<u64>()
}
