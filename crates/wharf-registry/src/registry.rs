//! The registry's operations over a blob store and a metadata store.

use std::sync::Arc;

use wharf_metadata::{ChildRecord, MetadataStore, NewManifest, StoredManifest};

use crate::cache::{ServedManifest, TagCache};
use wharf_oci::{
    Algorithm, Descriptor, Digest, Manifest, ManifestError, Reference, RepoName, Tag, media_types,
};
use wharf_storage::{BlobRead, BlobStore, BodyStream, StorageError};

use crate::error::{MissingChild, RegistryError, Result};
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
}

#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: BlobStore,
    meta: MetadataStore,
    config: RegistryConfig,
    /// Present when this process is the metadata's only writer (SQLite).
    tag_cache: Option<TagCache>,
    /// Signature verdicts of `[[trust]]` repositories.
    trust_cache: TrustCache,
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
        let tag_cache = (meta.backend() == "sqlite").then(TagCache::default);
        Registry {
            inner: Arc::new(Inner { blobs, meta, config, tag_cache, trust_cache: TrustCache::default() }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    pub fn metadata(&self) -> &MetadataStore {
        &self.inner.meta
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
    /// when absent. Only a client that pulls (GET) may fill; a HEAD is how a copy asks what
    /// is already here, and filling then would store what the copy left out.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest, may_fill: bool) -> Result<u64> {
        if let Some(size) = self.inner.meta.linked_blob_size(repo, digest).await? {
            return Ok(size);
        }
        if !may_fill {
            return Err(RegistryError::BlobUnknown { repo: repo.clone(), digest: digest.clone() });
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

    /// Read a blob linked to `repo`, optionally a byte range (inclusive).
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<BlobRead> {
        let size = self.blob_size(repo, digest, true).await?;
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
        let size = self.inner.blobs.put_stream(digest, body).await?;
        self.inner.meta.link_blob(repo, digest, size).await?;
        Ok(size)
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
        Ok(self.inner.blobs.append(id, start, body).await?)
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
            self.inner.blobs.append(id, start, body).await?;
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
        let served = |m: StoredManifest| ServedManifest {
            digest: m.digest,
            media_type: m.media_type,
            content: m.content.into(),
        };
        // By tag: the pull hot path. From the cache, else one query for tag and bytes.
        let digest = match reference {
            Reference::Digest(d) => d,
            Reference::Tag(tag) => {
                let cache = self.inner.tag_cache.as_ref();
                if let Some(hit) = cache.and_then(|c| c.get(repo, tag)) {
                    return Ok(hit);
                }
                let generation = cache.map(TagCache::generation);
                return match self.inner.meta.get_tagged_manifest(repo, tag).await? {
                    Some(m) => {
                        let m = served(m);
                        if let (Some(c), Some(g)) = (cache, generation) {
                            c.fill(g, repo, tag, &m);
                        }
                        Ok(m)
                    }
                    None => Err(self.manifest_unknown(repo, reference).await?),
                };
            }
        };
        if let Some(m) = self.inner.meta.get_manifest(repo, digest).await? {
            return Ok(served(m));
        }
        if self.fill_manifest(repo, digest, 0).await?
            && let Some(m) = self.inner.meta.get_manifest(repo, digest).await?
        {
            return Ok(served(m));
        }
        Err(self.manifest_unknown(repo, reference).await?)
    }

    /// Tags of `repo` may have changed: drop what the cache holds for it.
    fn invalidate(&self, repo: &RepoName) {
        if let Some(c) = &self.inner.tag_cache {
            c.invalidate(repo);
        }
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
        if let Some((media_type, size)) = self.inner.meta.manifest_exists(repo, digest).await? {
            return Ok((digest.clone(), media_type, size));
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
        let children = self.check_children(repo, &manifest).await?;

        let annotations_json =
            manifest.annotations.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default());
        let artifact_type = manifest.effective_artifact_type();
        let tag: Option<&Tag> = match reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        };
        let subject = manifest.subject.as_ref().map(|s| s.digest.clone());
        self.inner
            .meta
            .put_manifest(NewManifest {
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
            })
            .await?;
        // After the commit: a reader that saw the old tag cannot fill the cache any more.
        self.invalidate(repo);
        if let Some(signed) = signed_subject(&manifest, tag) {
            self.inner.trust_cache.signature_pushed(repo, &signed);
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
    async fn check_children(&self, repo: &RepoName, manifest: &Manifest) -> Result<Vec<ChildRecord>> {
        let rule = self.index_rule(repo);
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
        let deleted = match reference {
            Reference::Digest(d) => self.inner.meta.delete_manifest(repo, d).await?,
            Reference::Tag(t) => self.inner.meta.delete_tag(repo, t).await?,
        };
        self.invalidate(repo);
        self.inner.trust_cache.forget_repo(repo);
        if deleted { Ok(()) } else { Err(self.manifest_unknown(repo, reference).await?) }
    }

    // ---- on-demand fill ----------------------------------------------------------------

    fn upstream_for(&self, repo: &RepoName) -> Option<&Arc<dyn Upstream>> {
        self.inner.config.upstreams.iter().find(|r| r.pattern.matches(repo)).map(|r| &r.upstream)
    }

    /// Fetch manifest `digest` (and the blobs it needs) from the repository's upstream and
    /// store it through the normal push path. `Ok(false)` when there is no upstream, it does
    /// not have the manifest, or it cannot be reached (logged).
    async fn fill_manifest(&self, repo: &RepoName, digest: &Digest, depth: u8) -> Result<bool> {
        let Some(upstream) = self.upstream_for(repo) else { return Ok(false) };
        let (media_type, bytes) = match upstream.manifest(repo, digest).await {
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
        for desc in manifest.blobs() {
            if !self.foreign_allowed(desc)
                && self.inner.meta.linked_blob_size(repo, &desc.digest).await?.is_none()
            {
                self.fill_blob(repo, &desc.digest).await?;
            }
        }
        // An index needs whatever children this repository's policy requires.
        if depth < 2 {
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
        match self.put_manifest(repo, &Reference::Digest(digest.clone()), Some(&media_type), &bytes).await {
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

    /// Fetch blob `digest` from the repository's upstream, verify, store, link.
    async fn fill_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let Some(upstream) = self.upstream_for(repo) else { return Ok(None) };
        let stream = match upstream.blob(repo, digest).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(%repo, %digest, upstream = %upstream.describe(), error = %e, "on-demand fill failed");
                return Ok(None);
            }
        };
        // A stream that breaks off or hashes wrong leaves nothing stored: the blob is still
        // unknown here, which is what the pulling client is told.
        let size = match self.inner.blobs.put_stream(digest, stream).await {
            Ok(size) => size,
            Err(e @ StorageError::Io(_)) => return Err(RegistryError::Storage(e)),
            Err(e) => {
                tracing::warn!(%repo, %digest, upstream = %upstream.describe(), error = %e, "on-demand fill failed");
                return Ok(None);
            }
        };
        self.inner.meta.link_blob(repo, digest, size).await?;
        tracing::info!(%repo, %digest, size, upstream = %upstream.describe(), "filled blob from upstream");
        Ok(Some(size))
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
