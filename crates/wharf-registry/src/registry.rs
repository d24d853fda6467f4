//! The registry's operations over a blob store and a metadata store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;
use wharf_metadata::{ChildRecord, MetadataStore, NewManifest};

use crate::cache::{ManifestCache, ServedManifest};
use wharf_oci::{
    Algorithm, Descriptor, Digest, Manifest, ManifestError, Reference, RepoName, Tag, media_types,
};
use wharf_storage::{BlobRead, BlobStore, BodyStream};

use crate::error::{MissingChild, RegistryError, Result};
use crate::events::{self, EventKind, EventOrigin, ManifestTarget, Webhook, WebhookStats};
use crate::fill::{FillJob, FillState, Flights};
use crate::policy::{IndexPolicy, IndexRule};
use crate::report::{ChildReport, IndexReport, ReferrerReport, StorageReport};
use crate::trust::{TrustCache, TrustRule, signed_subject};
use crate::upstream::{Upstream, UpstreamRule};

/// Settings that change what the registry accepts.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    pub index_policy: IndexPolicy,
    /// URL prefixes a foreign (non-distributable) layer may point at and so be absent.
    pub foreign_layer_urls: Vec<String>,
    /// Upstreams that fill absent manifests and blobs on demand; first matching pattern wins.
    pub upstreams: Vec<UpstreamRule>,
    /// `[[trust]]`: repositories that serve only manifests whose signature verifies.
    pub trust: Vec<TrustRule>,
    /// `[[webhooks]]`: who hears of pushes, deletes and mirror runs (see `events.rs`).
    pub webhooks: Vec<Webhook>,
    /// Pushed blobs larger than this are refused (`413 SIZE_INVALID`) once the upload
    /// crosses it, and nothing of them is kept. Fills from upstreams and mounts are not
    /// pushes and are not limited. `None`: no limit.
    pub max_blob_bytes: Option<u64>,
}

#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: BlobStore,
    meta: MetadataStore,
    config: RegistryConfig,
    /// Manifests of the pull hot path (see `cache.rs` for how it stays true with replicas).
    manifest_cache: ManifestCache,
    /// Signature verdicts of `[[trust]]` repositories.
    trust_cache: TrustCache,
    /// Blob fills from upstreams in flight: one download per blob, whoever asks.
    flights: Flights,
    /// Manifest look-ups upstream in flight (by tag or digest): one at a time per manifest.
    manifest_locks: KeyedLocks,
    /// This instance, as webhook events name it.
    event_source: events::Source,
    webhook_stats: WebhookStats,
    /// Wakes the server's webhook deliverer when this process queued events.
    events_notify: tokio::sync::Notify,
}

/// One async lock per key, created on demand and dropped with its last holder.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, l| l.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Where a blob readable in a repository is.
enum BlobSource {
    Here(u64),
    /// Being filled from the upstream: readable as it arrives.
    Filling(u64, watch::Receiver<FillState>),
    Unknown,
}

/// What a successful manifest push reports back.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// Outcome of `POST /blobs/uploads/?mount=`.
pub enum MountOutcome {
    Mounted {
        size: u64,
    },
    /// The blob could not be mounted; a regular upload session was opened instead.
    Upload {
        id: String,
    },
}

impl Registry {
    pub fn new(blobs: BlobStore, meta: MetadataStore, config: RegistryConfig) -> Registry {
        let manifest_cache = ManifestCache::new(meta.replica_lease());
        let trust_cache = TrustCache::new(meta.replica_lease());
        Registry {
            inner: Arc::new(Inner {
                blobs,
                meta,
                config,
                manifest_cache,
                trust_cache,
                flights: Flights::default(),
                manifest_locks: KeyedLocks::default(),
                event_source: events::Source::new(),
                webhook_stats: WebhookStats::default(),
                events_notify: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    pub fn metadata(&self) -> &MetadataStore {
        &self.inner.meta
    }

    /// The `[[webhooks]]` entry with this URL (the outbox names webhooks by URL).
    pub fn webhook(&self, url: &str) -> Option<&Webhook> {
        self.inner.config.webhooks.iter().find(|w| w.url == url)
    }

    /// Resolves when this process has queued webhook events since the last call (or at the
    /// next one): the deliverer waits on it between looks at the outbox.
    pub async fn events_queued(&self) {
        self.inner.events_notify.notified().await
    }

    fn wake_deliverer(&self, queued: &[wharf_metadata::NewEvent]) {
        if !queued.is_empty() {
            self.inner.events_notify.notify_one();
        }
    }

    /// Webhook deliveries since start (counted by the server's deliverer).
    pub fn webhook_stats(&self) -> &WebhookStats {
        &self.inner.webhook_stats
    }

    /// Queue a `mirror_run` event for the webhooks that want one for `dest`. `run` is the run's
    /// summary (as the mirrors status API shows it).
    pub async fn notify_mirror_run(&self, name: &str, dest: &RepoName, run: serde_json::Value) -> Result<()> {
        let source = &self.inner.event_source;
        let rows = events::for_webhooks(&self.inner.config.webhooks, EventKind::MirrorRun, dest, || {
            events::mirror_run_event(name, dest, run, source)
        });
        self.inner.meta.enqueue_events(&rows).await?;
        self.wake_deliverer(&rows);
        Ok(())
    }

    pub(crate) fn trust_cache(&self) -> &TrustCache {
        &self.inner.trust_cache
    }

    pub fn blob_store(&self) -> &BlobStore {
        &self.inner.blobs
    }

    /// May any repository hold a sparse index?
    pub fn sparse_supported(&self) -> bool {
        self.inner.config.index_policy.any_sparse()
    }

    pub fn index_rule(&self, repo: &RepoName) -> &IndexRule {
        self.inner.config.index_policy.rule_for(repo)
    }

    // ---- blobs -------------------------------------------------------------------------

    /// Size of a blob readable in `repo`. `may_fill`: fetch it from the repository's upstream
    /// when absent (joining a fill in flight), and give its size once it is stored, so that a
    /// client that sees it exist may push a manifest referencing it. Only a client that pulls
    /// (GET) may fill; a HEAD is how a copy asks what is already here, and filling then would
    /// store what the copy left out.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest, may_fill: bool) -> Result<u64> {
        if !may_fill {
            return match self.inner.meta.linked_blob_size(repo, digest).await? {
                Some(size) => Ok(size),
                None => Err(RegistryError::BlobUnknown { repo: repo.clone(), digest: digest.clone() }),
            };
        }
        match self.fill_blob(repo, digest).await? {
            Some(size) => Ok(size),
            None => Err(RegistryError::BlobUnknown { repo: repo.clone(), digest: digest.clone() }),
        }
    }

    /// Whether the blob store answers (the object store is reachable): for health checks.
    pub async fn check_blob_store(&self) -> Result<()> {
        Ok(self.inner.blobs.check().await?)
    }

    /// Where a client may fetch a blob linked to `repo` straight from the object store (S3 with
    /// `redirect = true`); `None` when blobs are served through the registry.
    pub async fn blob_redirect(&self, repo: &RepoName, digest: &Digest) -> Result<Option<String>> {
        if !self.inner.blobs.redirects() {
            return Ok(None);
        }
        self.blob_size(repo, digest, true).await?;
        Ok(self.inner.blobs.redirect_url(digest).await?)
    }

    /// Read a blob linked to `repo`, optionally a byte range (inclusive). A blob being filled
    /// from the upstream streams as it arrives (see `fill.rs`).
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<BlobRead> {
        let (size, filling) = match self.locate_blob(repo, digest).await? {
            BlobSource::Here(size) => (size, None),
            BlobSource::Filling(size, rx) => (size, Some(rx)),
            BlobSource::Unknown => {
                return Err(RegistryError::BlobUnknown { repo: repo.clone(), digest: digest.clone() });
            }
        };
        let range = match range {
            None => None,
            Some((first, last)) => {
                let last = last.unwrap_or(u64::MAX).min(size.saturating_sub(1));
                if first >= size || first > last {
                    return Err(RegistryError::ReadRangeInvalid(format!(
                        "range {first}-{} is outside blob {digest} of {size} bytes",
                        last
                    )));
                }
                Some((first, last))
            }
        };
        if let Some(rx) = filling {
            let (start, len) = match range {
                Some((first, last)) => (first, last - first + 1),
                None => (0, size),
            };
            let body = crate::fill::follow(rx, self.inner.blobs.clone(), digest.clone(), start, len);
            return Ok(BlobRead { size, start, len, body });
        }
        match self.inner.blobs.read(digest, range).await? {
            Some(read) => Ok(read),
            // Linked in metadata but gone from storage: report it like any missing blob.
            None => {
                tracing::error!(%repo, %digest, "blob is linked but missing from storage; run fsck");
                Err(RegistryError::BlobUnknown { repo: repo.clone(), digest: digest.clone() })
            }
        }
    }

    /// Unlink a blob from a repository. Its bytes stay until garbage collection finds
    /// nothing else referencing them.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.inner.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown { repo: repo.clone(), digest: digest.clone() })
        }
    }

    // ---- uploads -----------------------------------------------------------------------

    pub async fn start_upload(&self, repo: &RepoName) -> Result<String> {
        let id = self.inner.blobs.create_upload().await?;
        self.inner.meta.create_upload(&id, repo).await?;
        Ok(id)
    }

    /// Cross-repository mount. With `from`, only that repository is considered; without
    /// it, any repository holding the blob (with auth on, the server only lets a mount
    /// through when the caller may pull its source).
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
    ) -> Result<MountOutcome> {
        let source_size = match from {
            Some(from) => self.inner.meta.linked_blob_size(from, digest).await?,
            None => self.inner.meta.blob_size(digest).await?,
        };
        // Touch, not just stat: garbage collection must see the blob as in use from now on.
        if let Some(size) = source_size
            && self.inner.blobs.touch(digest).await?.is_some()
        {
            self.inner.meta.link_blob(repo, digest, size).await?;
            return Ok(MountOutcome::Mounted { size });
        }
        Ok(MountOutcome::Upload { id: self.start_upload(repo).await? })
    }

    /// `POST ?digest=` with the whole blob as body.
    pub async fn put_blob(&self, repo: &RepoName, digest: &Digest, body: BodyStream) -> Result<u64> {
        let (body, cap) = self.capped(body, 0);
        let size = cap.judge(self.inner.blobs.put_stream(digest, body).await)?;
        self.inner.meta.link_blob(repo, digest, size).await?;
        Ok(size)
    }

    /// `body` limited to what `max_blob_bytes` leaves after `offset` bytes already received.
    fn capped(&self, body: BodyStream, offset: u64) -> (BodyStream, Cap) {
        match self.inner.config.max_blob_bytes {
            Some(max) => {
                let (body, tripped) = cap_body(body, max.saturating_sub(offset));
                (body, Cap(Some((max, tripped))))
            }
            None => (body, Cap(None)),
        }
    }

    /// Append a chunk to upload `id`, refused once the upload would pass `max_blob_bytes`
    /// (where the chunk starts is asked of the store only when a limit is set).
    async fn append_within_limit(&self, id: &str, start: Option<u64>, body: BodyStream) -> Result<u64> {
        let offset = match (start, self.inner.config.max_blob_bytes) {
            (Some(s), _) => s,
            (None, Some(_)) => self.inner.blobs.upload_size(id).await?,
            (None, None) => 0,
        };
        let (body, cap) = self.capped(body, offset);
        cap.judge(self.inner.blobs.append(id, start, body).await)
    }

    async fn check_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        match self.inner.meta.upload_repo(id).await? {
            Some(r) if &r == repo => Ok(()),
            _ => Err(RegistryError::UploadUnknown(id.to_owned())),
        }
    }

    /// Bytes received so far.
    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<u64> {
        self.check_upload(repo, id).await?;
        Ok(self.inner.blobs.upload_size(id).await?)
    }

    /// Append a chunk; `start` (from `Content-Range`) must be the current size.
    pub async fn append_upload(
        &self,
        repo: &RepoName,
        id: &str,
        start: Option<u64>,
        body: BodyStream,
    ) -> Result<u64> {
        self.check_upload(repo, id).await?;
        self.append_within_limit(id, start, body).await
    }

    /// Close an upload: append the last chunk if any, verify the digest, publish.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        last_chunk: Option<(Option<u64>, BodyStream)>,
    ) -> Result<u64> {
        self.check_upload(repo, id).await?;
        if let Some((start, body)) = last_chunk {
            self.append_within_limit(id, start, body).await?;
        }
        let size = self.inner.blobs.commit(id, digest).await?;
        self.inner.meta.link_blob(repo, digest, size).await?;
        self.inner.meta.delete_upload(id).await?;
        Ok(size)
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.check_upload(repo, id).await?;
        self.inner.blobs.cancel(id).await?;
        self.inner.meta.delete_upload(id).await?;
        Ok(())
    }

    /// Remove upload sessions untouched for `older_than`; returns how many went.
    pub async fn expire_uploads(&self, older_than: std::time::Duration) -> Result<usize> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let unix = cutoff.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let mut removed = 0;
        // Sessions the data files say are stale (covers sessions whose metadata row is gone).
        for id in self.inner.blobs.stale_uploads(cutoff).await? {
            self.inner.blobs.cancel(&id).await?;
            self.inner.meta.delete_upload(&id).await?;
            removed += 1;
        }
        // Rows whose data directory never existed or is already gone.
        for id in self.inner.meta.uploads_older_than(unix).await? {
            if self.inner.blobs.upload_size(&id).await.is_err() {
                self.inner.meta.delete_upload(&id).await?;
            }
        }
        Ok(removed)
    }

    // ---- manifests ---------------------------------------------------------------------

    /// The error for a manifest that is not here: a repository that does not exist, an
    /// absent child of a sparse index (named by platform), or simply an unknown reference.
    async fn manifest_unknown(&self, repo: &RepoName, reference: &Reference) -> Result<RegistryError> {
        if let Reference::Digest(d) = reference {
            let parents = self.inner.meta.indexes_listing(repo, d).await?;
            if let Some((index, child)) = parents.first() {
                let what = match &child.platform {
                    Some(p) => format!("platform {p}"),
                    None => format!("child manifest {d}"),
                };
                return Ok(RegistryError::ManifestUnknown {
                    message: format!(
                        "{what} of index {index} is not in this registry (sparse index): \
                         the index was mirrored without it"
                    ),
                });
            }
        }
        if !self.inner.meta.repo_exists(repo).await? {
            return Ok(RegistryError::NameUnknown(repo.clone()));
        }
        Ok(RegistryError::ManifestUnknown {
            message: format!("manifest {reference} is not in repository {repo}"),
        })
    }

    /// A manifest to serve; in a `[[trust]]` repository only if its signature verifies.
    pub async fn get_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ServedManifest> {
        let m = self.read_manifest(repo, reference).await?;
        self.enforce_trust(repo, &m.digest, Some(&m.content)).await?;
        Ok(m)
    }

    async fn read_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<ServedManifest> {
        // The pull hot path: from the cache (on PostgreSQL a lease, see `cache.rs`), else one
        // query for the bytes (by tag: tag and bytes in one).
        let cache = &self.inner.manifest_cache;
        if let Some(hit) = cache.get(repo, reference) {
            return Ok(hit);
        }
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(tag) => {
                // Pull-through repositories go by when the tag was last checked upstream, which
                // the tag cache does not know: they read the database (one query) instead.
                if let Some(rule) = self.upstream_rule(repo).filter(|r| r.proxy_tags) {
                    return self.get_proxied_tag(repo, tag, rule).await;
                }
                let read = cache.read_start();
                return match self.inner.meta.get_tagged_manifest(repo, tag).await? {
                    Some(m) => {
                        let m = ServedManifest::from(m);
                        cache.fill(read, repo, reference, &m);
                        Ok(m)
                    }
                    None => Err(self.manifest_unknown(repo, reference).await?),
                };
            }
        };
        if let Some(m) = self.read_into_cache(repo, reference, digest).await? {
            return Ok(m);
        }
        if self.fill_manifest(repo, digest, 0).await?
            && let Some(m) = self.inner.meta.get_manifest(repo, digest).await?
        {
            return Ok(m.into());
        }
        Err(self.manifest_unknown(repo, reference).await?)
    }

    /// The manifest `digest` (named by `reference`) as stored here, remembered in the cache;
    /// `None` if it is not here. For a caller that missed the cache.
    async fn read_into_cache(
        &self,
        repo: &RepoName,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Option<ServedManifest>> {
        let cache = &self.inner.manifest_cache;
        let read = cache.read_start();
        let Some(m) = self.inner.meta.get_manifest(repo, digest).await? else { return Ok(None) };
        let m = ServedManifest::from(m);
        cache.fill(read, repo, reference, &m);
        Ok(Some(m))
    }

    /// Tags of `repo` may have changed: drop what the cache holds for it.
    fn invalidate(&self, repo: &RepoName) {
        self.inner.manifest_cache.invalidate(repo);
    }

    /// After the commit of a write that removed a manifest or a tag, moved a tag, or changed
    /// what a signature allows: wait until no replica's lease on the old state is left
    /// (PostgreSQL; nothing to wait for on SQLite), so that once the client has its answer
    /// every replica serves the new state.
    async fn outlast_replica_leases(&self) {
        tokio::time::sleep(self.inner.meta.removal_wait()).await;
    }

    /// Media type and size of a manifest, for HEAD. `may_fill`: as for
    /// [`Registry::blob_size`]; HEAD passes `false`.
    pub async fn stat_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        may_fill: bool,
    ) -> Result<(Digest, String, u64)> {
        let stat = self.stat_unchecked(repo, reference, may_fill).await?;
        self.enforce_trust(repo, &stat.0, None).await?;
        Ok(stat)
    }

    /// As [`Registry::stat_manifest`], without `[[trust]]` (reports, which serve no image).
    async fn stat_unchecked(
        &self,
        repo: &RepoName,
        reference: &Reference,
        may_fill: bool,
    ) -> Result<(Digest, String, u64)> {
        // By tag, HEAD takes the GET path: served from the tag cache, or one query that
        // resolves the tag and reads the row, instead of two.
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(_) => {
                let m = self.read_manifest(repo, reference).await?;
                return Ok((m.digest, m.media_type, m.content.len() as u64));
            }
        };
        // As GET by digest: the bytes are small, and reading them fills the cache that the
        // GET after this HEAD (or the next HEAD) is served from.
        let m = match self.inner.manifest_cache.get(repo, reference) {
            Some(hit) => Some(hit),
            None => self.read_into_cache(repo, reference, digest).await?,
        };
        if let Some(m) = m {
            return Ok((m.digest, m.media_type, m.content.len() as u64));
        }
        if may_fill
            && self.fill_manifest(repo, digest, 0).await?
            && let Some((media_type, size)) = self.inner.meta.manifest_exists(repo, digest).await?
        {
            return Ok((digest.clone(), media_type, size));
        }
        Err(self.manifest_unknown(repo, reference).await?)
    }

    /// Validate and store a manifest as the exact bytes received.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
    ) -> Result<PushedManifest> {
        self.put_manifest_from(repo, reference, content_type, bytes, &EventOrigin::default()).await
    }

    /// [`Registry::put_manifest`] by a client described by `origin`: webhooks that want the
    /// push get an event queued in the push's own transaction (never sent from here).
    pub async fn put_manifest_from(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
        origin: &EventOrigin,
    ) -> Result<PushedManifest> {
        self.store_manifest(repo, reference, content_type, bytes, false, Some(origin)).await
    }

    /// [`Registry::put_manifest`]; with `sparse`, an index is stored whatever children it
    /// lacks, whatever the repository's policy (pull-through stores what the upstream has).
    async fn store_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: &[u8],
        sparse: bool,
        origin: Option<&EventOrigin>,
    ) -> Result<PushedManifest> {
        let manifest = Manifest::parse(content_type, bytes).map_err(|e| match e {
            ManifestError::TooLarge(n) => RegistryError::ManifestTooLarge(n),
            other => RegistryError::ManifestInvalid(other.to_string()),
        })?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::compute(expected.algorithm(), bytes);
                if &actual != expected {
                    return Err(RegistryError::DigestInvalid(format!(
                        "manifest bytes hash to {actual}, not to {expected} named in the URL"
                    )));
                }
                actual
            }
            Reference::Tag(_) => Digest::compute(Algorithm::Sha256, bytes),
        };

        let blob_refs = self.check_blobs(repo, &manifest).await?;
        let children = self.check_children(repo, &manifest, sparse).await?;

        let annotations_json =
            manifest.annotations.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default());
        let artifact_type = manifest.effective_artifact_type();
        let tag: Option<&Tag> = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        // Fills from an upstream (no origin) are not pushes: nobody sent them.
        let events = match origin {
            Some(origin) => events::for_webhooks(&self.inner.config.webhooks, EventKind::Push, repo, || {
                let target = ManifestTarget {
                    repo,
                    digest: &digest,
                    media_type: &manifest.media_type,
                    size: bytes.len() as u64,
                    tag: tag.map(Tag::as_str),
                };
                events::manifest_event(EventKind::Push, &target, origin, &self.inner.event_source)
            }),
            None => Vec::new(),
        };
        let put = self
            .inner
            .meta
            .put_manifest_with_events(
                NewManifest {
                    repo,
                    digest: &digest,
                    media_type: &manifest.media_type,
                    content: bytes,
                    subject: subject.as_ref(),
                    artifact_type: artifact_type.as_deref(),
                    annotations_json: annotations_json.as_deref(),
                    blob_refs: &blob_refs,
                    children: &children,
                    tag,
                },
                &events,
            )
            .await?;
        self.wake_deliverer(&events);
        // After the commit: a reader that saw the old tag cannot fill the cache any more, and
        // a tag that moved is not served from any replica's lease on where it was.
        // A signature in a `[[trust]]` repository changes what replicas allow: as a tag move,
        // answered once no replica decides by a verdict from before it. Elsewhere no verdict
        // is kept, and none under way is dropped for it.
        let changes_verdicts = signed_subject(&manifest, tag).is_some() && self.trust_rule(repo).is_some();
        if changes_verdicts {
            self.inner.trust_cache.forget_repo(repo);
        }
        self.invalidate(repo);
        if put.tag_moved || changes_verdicts {
            self.outlast_replica_leases().await;
        }
        Ok(PushedManifest { digest, subject })
    }

    /// Config and layers must be in the repository (foreign layers only where allowed).
    async fn check_blobs(&self, repo: &RepoName, manifest: &Manifest) -> Result<Vec<(Digest, u64)>> {
        let mut refs = Vec::new();
        for desc in manifest.blobs() {
            if self.foreign_allowed(desc) {
                continue;
            }
            match self.inner.meta.linked_blob_size(repo, &desc.digest).await? {
                Some(size) if size == desc.size => refs.push((desc.digest.clone(), size)),
                Some(size) => {
                    return Err(RegistryError::ManifestInvalid(format!(
                        "descriptor of blob {} says {} bytes, but the blob has {size}",
                        desc.digest, desc.size
                    )));
                }
                None => {
                    return Err(RegistryError::ManifestBlobUnknown {
                        repo: repo.clone(),
                        digest: desc.digest.clone(),
                    });
                }
            }
        }
        Ok(refs)
    }

    fn foreign_allowed(&self, desc: &Descriptor) -> bool {
        let Some(urls) = &desc.urls else { return false };
        media_types::is_foreign_layer(&desc.media_type)
            && !urls.is_empty()
            && urls.iter().all(|u| {
                self.inner.config.foreign_layer_urls.iter().any(|prefix| u.starts_with(prefix.as_str()))
            })
    }

    /// Apply the repository's index policy; return the children to record.
    async fn check_children(
        &self,
        repo: &RepoName,
        manifest: &Manifest,
        sparse: bool,
    ) -> Result<Vec<ChildRecord>> {
        let rule = if sparse { &IndexRule::Sparse } else { self.index_rule(repo) };
        let mut records = Vec::new();
        let mut missing = Vec::new();
        for (position, child) in manifest.children().iter().enumerate() {
            let platform = child.platform.as_ref().map(|p| p.normalized().to_string());
            if rule.requires(child) && self.inner.meta.manifest_exists(repo, &child.digest).await?.is_none() {
                missing.push(MissingChild {
                    digest: child.digest.clone(),
                    media_type: child.media_type.clone(),
                    platform: platform.clone(),
                });
            }
            records.push(ChildRecord {
                position: position as u32,
                digest: child.digest.clone(),
                media_type: child.media_type.clone(),
                size: child.size,
                platform,
                platform_json: child.platform.as_ref().and_then(|p| serde_json::to_string(p).ok()),
                artifact_type: child.artifact_type.clone(),
                annotations_json: child.annotations.as_ref().and_then(|a| serde_json::to_string(a).ok()),
            });
        }
        if !missing.is_empty() {
            return Err(RegistryError::IndexChildrenMissing { policy: rule.describe(), missing });
        }
        Ok(records)
    }

    /// Delete by digest (the manifest and its tags) or by tag (just the tag).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        self.delete_manifest_from(repo, reference, &EventOrigin::default()).await
    }

    /// [`Registry::delete_manifest`] by a client described by `origin`, queueing `delete`
    /// events in the delete's transaction.
    pub async fn delete_manifest_from(
        &self,
        repo: &RepoName,
        reference: &Reference,
        origin: &EventOrigin,
    ) -> Result<()> {
        let hooks = &self.inner.config.webhooks;
        let deleted = match reference {
            Reference::Digest(d) => {
                let events = events::for_webhooks(hooks, EventKind::Delete, repo, || {
                    let target = ManifestTarget { repo, digest: d, media_type: "", size: 0, tag: None };
                    events::manifest_event(EventKind::Delete, &target, origin, &self.inner.event_source)
                });
                let deleted = self.inner.meta.delete_manifest_with_events(repo, d, &events).await?;
                self.wake_deliverer(&events);
                deleted
            }
            Reference::Tag(t) => {
                let events = match hooks.iter().any(|w| w.wants(EventKind::Delete, repo)) {
                    // The event names the digest the tag pointed at, as distribution's does.
                    true => match self.inner.meta.resolve_tag(repo, t).await? {
                        Some(d) => events::for_webhooks(hooks, EventKind::Delete, repo, || {
                            let target = ManifestTarget {
                                repo,
                                digest: &d,
                                media_type: "",
                                size: 0,
                                tag: Some(t.as_str()),
                            };
                            events::manifest_event(
                                EventKind::Delete,
                                &target,
                                origin,
                                &self.inner.event_source,
                            )
                        }),
                        None => Vec::new(),
                    },
                    false => Vec::new(),
                };
                let deleted = self.inner.meta.delete_tag_with_events(repo, t, &events).await?;
                self.wake_deliverer(&events);
                deleted
            }
        };
        if self.trust_rule(repo).is_some() {
            self.inner.trust_cache.forget_repo(repo);
        }
        self.invalidate(repo);
        if !deleted {
            return Err(self.manifest_unknown(repo, reference).await?);
        }
        self.outlast_replica_leases().await;
        Ok(())
    }

    // ---- on-demand fill ----------------------------------------------------------------

    fn upstream_rule(&self, repo: &RepoName) -> Option<&UpstreamRule> {
        self.inner.config.upstreams.iter().find(|r| r.pattern.matches(repo))
    }

    fn upstream_for(&self, repo: &RepoName) -> Option<&Arc<dyn Upstream>> {
        self.upstream_rule(repo).map(|r| &r.upstream)
    }

    /// Here, being filled, or unknown. With an upstream, a blob that is not here starts (or
    /// joins) its fill, and this returns once the upstream has answered.
    async fn locate_blob(&self, repo: &RepoName, digest: &Digest) -> Result<BlobSource> {
        if let Some(size) = self.inner.meta.linked_blob_size(repo, digest).await? {
            return Ok(BlobSource::Here(size));
        }
        let Some(mut rx) = self.blob_fill(repo, digest) else { return Ok(BlobSource::Unknown) };
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Connecting => {}
                FillState::Streaming { size, .. } => return Ok(BlobSource::Filling(size, rx)),
                // Stored and linked: read like any other blob.
                FillState::Done { size, .. } => return Ok(BlobSource::Here(size)),
                // Nothing was stored: the blob is unknown here, which is what the client is told.
                FillState::Absent | FillState::Failed(_) => return Ok(BlobSource::Unknown),
            }
            if rx.changed().await.is_err() && matches!(*rx.borrow(), FillState::Connecting) {
                return Ok(BlobSource::Unknown);
            }
        }
    }

    /// The fill of `digest` into `repo` from its upstream: joined if in flight, else started
    /// (in a task of its own, so that it finishes for the cache and the other readers even if
    /// the client that started it goes away). `None` without an upstream.
    fn blob_fill(&self, repo: &RepoName, digest: &Digest) -> Option<watch::Receiver<FillState>> {
        let upstream = self.upstream_for(repo)?.clone();
        let key = (repo.clone(), digest.clone());
        Some(self.inner.flights.join_or_start(&key.clone(), |tx| {
            let reg = self.clone();
            let job = FillJob {
                blobs: self.inner.blobs.clone(),
                meta: self.inner.meta.clone(),
                upstream,
                repo: repo.clone(),
                digest: digest.clone(),
            };
            tokio::spawn(async move {
                crate::fill::run(job, &tx).await;
                reg.inner.flights.finish(&key, &tx);
            });
        }))
    }

    /// Fill blob `digest` and wait until it is stored: `Some(size)`, or `None` when the
    /// upstream cannot supply it (logged by the fill).
    async fn fill_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.inner.meta.linked_blob_size(repo, digest).await? {
            return Ok(Some(size));
        }
        let Some(mut rx) = self.blob_fill(repo, digest) else { return Ok(None) };
        loop {
            match &*rx.borrow_and_update() {
                FillState::Done { size, .. } => return Ok(Some(*size)),
                FillState::Absent | FillState::Failed(_) => return Ok(None),
                FillState::Connecting | FillState::Streaming { .. } => {}
            }
            if rx.changed().await.is_err() && !matches!(*rx.borrow(), FillState::Done { .. }) {
                return Ok(None);
            }
        }
    }

    /// Fill every blob of `manifest` that `repo` lacks, at the same time. `false` if the
    /// upstream could not supply one of them.
    async fn fill_blobs_of(&self, repo: &RepoName, manifest: &Manifest) -> Result<bool> {
        let missing: Vec<&Descriptor> =
            manifest.blobs().into_iter().filter(|d| !self.foreign_allowed(d)).collect();
        let filled =
            futures_util::future::try_join_all(missing.iter().map(|d| self.fill_blob(repo, &d.digest)))
                .await?;
        Ok(filled.iter().all(Option::is_some))
    }

    /// Fetch manifest `digest` (and the blobs it needs) from the repository's upstream and
    /// store it through the normal push path. `Ok(false)` when there is no upstream, it does
    /// not have the manifest, or it cannot be reached (logged).
    async fn fill_manifest(&self, repo: &RepoName, digest: &Digest, depth: u8) -> Result<bool> {
        let Some(rule) = self.upstream_rule(repo) else { return Ok(false) };
        let upstream = &rule.upstream;
        // One look-up upstream per manifest; whoever waited finds it stored.
        let _one_at_a_time = self.inner.manifest_locks.lock(format!("{repo}@{digest}")).await;
        if self.inner.meta.manifest_exists(repo, digest).await?.is_some() {
            return Ok(true);
        }
        let (media_type, bytes) = match upstream.manifest(repo, &Reference::Digest(digest.clone())).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(false),
            Err(e) => {
                tracing::warn!(%repo, %digest, upstream = %upstream.describe(), error = %e, "on-demand fill failed");
                return Ok(false);
            }
        };
        if !digest.verifies(&bytes) {
            tracing::warn!(%repo, %digest, upstream = %upstream.describe(), "upstream sent a manifest with another digest");
            return Ok(false);
        }
        let Ok(manifest) = Manifest::parse(Some(&media_type), &bytes) else { return Ok(false) };
        self.fill_blobs_of(repo, &manifest).await?;
        // An index needs whatever children this repository's policy requires; with
        // pull-through it is stored as received and its children fill when asked for.
        let sparse = rule.proxy_tags;
        if depth < 2 && !sparse {
            let rule = self.index_rule(repo).clone();
            for child in manifest.children() {
                if rule.requires(child)
                    && self.inner.meta.manifest_exists(repo, &child.digest).await?.is_none()
                {
                    Box::pin(self.fill_manifest(repo, &child.digest, depth + 1)).await?;
                }
            }
        }
        // What the upstream could not complete (a missing layer, a required child it lacks) is
        // a manifest this registry does not have: the client gets the usual 404, not the 400
        // a pushing client would.
        let reference = Reference::Digest(digest.clone());
        match self.store_manifest(repo, &reference, Some(&media_type), &bytes, sparse, None).await {
            Ok(_) => {
                tracing::info!(%repo, %digest, upstream = %upstream.describe(), "filled manifest from upstream");
                Ok(true)
            }
            Err(e @ (RegistryError::Storage(_) | RegistryError::Metadata(_))) => Err(e),
            Err(e) => {
                tracing::warn!(%repo, %digest, upstream = %upstream.describe(), error = %e, "on-demand fill incomplete");
                Ok(false)
            }
        }
    }

    /// Pull-through by tag: the tag as stored here if it was checked within the TTL, else as
    /// the upstream has it now (stored as received), else, when the upstream cannot be asked,
    /// as stored here.
    async fn get_proxied_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        rule: &UpstreamRule,
    ) -> Result<ServedManifest> {
        let now = unix_now();
        let ttl = i64::try_from(rule.tag_ttl.as_secs()).unwrap_or(i64::MAX);
        let fresh = |checked: Option<i64>| checked.is_some_and(|c| c <= now && now - c < ttl);
        if let Some((m, checked)) = self.inner.meta.get_tagged_manifest_checked(repo, tag).await?
            && fresh(checked)
        {
            return Ok(ServedManifest::from(m));
        }
        // One look-up per tag at a time; those who waited find it fresh.
        let _one_at_a_time = self.inner.manifest_locks.lock(format!("{repo}:{tag}")).await;
        let local = self.inner.meta.get_tagged_manifest_checked(repo, tag).await?;
        if let Some((m, checked)) = &local
            && fresh(*checked)
        {
            return Ok(ServedManifest::from(m.clone()));
        }
        let local = local.map(|(m, _)| m);
        let upstream = &rule.upstream;
        let reference = Reference::Tag(tag.clone());
        let (media_type, bytes) = match upstream.manifest(repo, &reference).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                return match local {
                    Some(m) => {
                        tracing::warn!(%repo, %tag, upstream = %upstream.describe(), "tag is gone upstream; serving the copy here");
                        self.inner.meta.mark_tag_checked(repo, tag, &m.digest, now).await?;
                        Ok(ServedManifest::from(m))
                    }
                    None => Err(RegistryError::ManifestUnknown {
                        message: format!(
                            "tag {tag} is neither in repository {repo} nor upstream at {}",
                            upstream.describe()
                        ),
                    }),
                };
            }
            Err(e) => {
                tracing::warn!(%repo, %tag, upstream = %upstream.describe(), error = %e, "pull-through: upstream unavailable");
                return match local {
                    Some(m) => Ok(ServedManifest::from(m)),
                    None => Err(RegistryError::ManifestUnknown {
                        message: format!(
                            "tag {tag} is not in repository {repo}, and its upstream {} could not be \
                             asked: {e}",
                            upstream.describe()
                        ),
                    }),
                };
            }
        };
        let digest = Digest::compute(Algorithm::Sha256, &bytes);
        if let Some(m) = &local
            && m.digest == digest
        {
            self.inner.meta.mark_tag_checked(repo, tag, &digest, now).await?;
            return Ok(ServedManifest::from(m.clone()));
        }
        let stored = match Manifest::parse(Some(&media_type), &bytes) {
            Ok(manifest) if self.fill_blobs_of(repo, &manifest).await? => {
                self.store_manifest(repo, &reference, Some(&media_type), &bytes, true, None).await.map(|_| ())
            }
            Ok(_) => Err(RegistryError::ManifestUnknown {
                message: format!(
                    "tag {tag} of {}: the upstream could not supply every blob of manifest {digest}",
                    upstream.describe()
                ),
            }),
            Err(e) => Err(RegistryError::ManifestInvalid(format!(
                "tag {tag} of {} is not a manifest this registry can store: {e}",
                upstream.describe()
            ))),
        };
        match stored {
            Ok(()) => {
                self.inner.meta.mark_tag_checked(repo, tag, &digest, now).await?;
                tracing::info!(%repo, %tag, %digest, upstream = %upstream.describe(), "pull-through: tag updated from upstream");
                match self.inner.meta.get_manifest(repo, &digest).await? {
                    Some(m) => Ok(ServedManifest::from(m)),
                    None => Err(self.manifest_unknown(repo, &reference).await?),
                }
            }
            Err(e @ (RegistryError::Storage(_) | RegistryError::Metadata(_))) => Err(e),
            Err(e) => match local {
                Some(m) => {
                    tracing::warn!(%repo, %tag, upstream = %upstream.describe(), error = %e, "pull-through: keeping the copy here");
                    Ok(ServedManifest::from(m))
                }
                None => Err(e),
            },
        }
    }

    // ---- discovery ---------------------------------------------------------------------

    pub async fn tags(&self, repo: &RepoName, n: Option<u32>, last: Option<&str>) -> Result<Vec<String>> {
        let tags = self.inner.meta.list_tags(repo, n, last).await?;
        if tags.is_empty() && !self.inner.meta.repo_exists(repo).await? {
            return Err(RegistryError::NameUnknown(repo.clone()));
        }
        Ok(tags)
    }

    pub async fn catalog(&self, n: Option<u32>, last: Option<&str>) -> Result<Vec<String>> {
        Ok(self.inner.meta.catalog(n, last).await?)
    }

    /// The referrers of `subject` as an OCI image index, optionally filtered by
    /// artifact type. Returns the index bytes and whether a filter was applied.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<u8>> {
        let referrers = self.inner.meta.referrers(repo, subject).await?;
        let manifests: Vec<serde_json::Value> = referrers
            .into_iter()
            .filter(|r| artifact_type.is_none() || r.artifact_type.as_deref() == artifact_type)
            .map(|r| {
                let mut d = serde_json::json!({
                    "mediaType": r.media_type,
                    "digest": r.digest.to_string(),
                    "size": r.size,
                });
                if let Some(a) = r.artifact_type {
                    d["artifactType"] = a.into();
                }
                if let Some(a) =
                    r.annotations_json.and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
                {
                    d["annotations"] = a;
                }
                d
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": manifests,
        });
        Ok(serde_json::to_vec(&index).unwrap_or_default())
    }

    async fn referrer_reports(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<ReferrerReport>> {
        Ok(self
            .inner
            .meta
            .referrers(repo, subject)
            .await?
            .into_iter()
            .map(|r| ReferrerReport { digest: r.digest, artifact_type: r.artifact_type, size: r.size })
            .collect())
    }

    // ---- presence ----------------------------------------------------------------------

    /// Which children of an index are here, what they weigh, and what the whole would.
    pub async fn index_report(&self, repo: &RepoName, reference: &Reference) -> Result<IndexReport> {
        // A report looks, it does not fill.
        let (digest, media_type, size) = self.stat_unchecked(repo, reference, false).await?;
        let children = self.inner.meta.index_children(repo, &digest).await?;
        let mut reports = Vec::with_capacity(children.len());
        for child in children {
            let stored_bytes = if child.present {
                Some(child.size + self.inner.meta.manifest_blob_bytes(repo, &child.digest).await?)
            } else {
                None
            };
            let referrers = self.referrer_reports(repo, &child.digest).await?;
            reports.push(ChildReport::from_presence(child, stored_bytes, referrers));
        }
        let referrers = self.referrer_reports(repo, &digest).await?;
        Ok(IndexReport::new(
            repo.clone(),
            digest,
            media_type,
            size,
            self.index_rule(repo).describe(),
            referrers,
            reports,
        ))
    }

    /// The registry-wide storage report over the repositories for which `include` is true
    /// (with auth: those the caller may pull). A handful of aggregate queries in one read
    /// transaction, whatever the number of repositories, indexes or blobs; each index's
    /// figures are those of its [`Registry::index_report`].
    pub async fn storage_report(
        &self,
        include: impl Fn(&RepoName) -> bool + Send + Sync,
    ) -> Result<StorageReport> {
        let figures = self.inner.meta.storage_figures(include).await?;
        Ok(StorageReport::from_figures(figures))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether a capped body crossed `max_blob_bytes`: the store then failed it like any broken
/// body (and undid it), and the error it gives is replaced by the one that says why.
struct Cap(Option<(u64, Arc<std::sync::atomic::AtomicBool>)>);

impl Cap {
    fn judge<T>(self, r: std::result::Result<T, wharf_storage::StorageError>) -> Result<T> {
        match (r, self.0) {
            (Err(_), Some((max, tripped))) if tripped.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(RegistryError::BlobTooLarge(max))
            }
            (r, _) => Ok(r?),
        }
    }
}

/// A body that fails once it has brought more than `room` bytes.
fn cap_body(body: BodyStream, room: u64) -> (BodyStream, Arc<std::sync::atomic::AtomicBool>) {
    use futures_util::StreamExt;
    let tripped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = tripped.clone();
    let mut seen = 0u64;
    let body = body.map(move |chunk| {
        let chunk = chunk?;
        seen += chunk.len() as u64;
        if seen > room {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(std::io::Error::other("the blob is larger than this registry accepts"));
        }
        Ok(chunk)
    });
    (Box::pin(body), tripped)
}
