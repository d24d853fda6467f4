//! One side of a copy: a registry repository or an OCI layout (an archive is read and written
//! through a layout). The copy algorithm sees only this, so it is the same for every transport.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OnceCell;
use wharf_client::{
    BlobOpener, ByteStream, ClientError, Mounted, RawManifest, RegistryClient, UploadSession,
};
use wharf_oci::{Descriptor, Digest, Reference, RepoName, media_types};

use crate::layout::OciLayout;
use crate::{ImageName, MirrorError, RefName};

#[derive(Clone)]
pub(crate) enum Endpoint {
    Registry(Arc<RegistryRepo>),
    Layout(Arc<OciLayout>),
}

pub(crate) struct RegistryRepo {
    pub client: RegistryClient,
    pub repo: RepoName,
    /// Whether the registry has the referrers API (learnt on first use).
    referrers_api: OnceCell<bool>,
    /// The repository's tags, listed once per run (cosign and tag-schema lookups). Only
    /// source endpoints list them, and a run does not change its sources.
    tags: OnceCell<Arc<Vec<String>>>,
    /// `X-Sparse-Manifest-Support` from the registry's ping (learnt on first use).
    sparse: OnceCell<Option<bool>>,
}

impl Endpoint {
    pub fn registry(client: RegistryClient, repo: RepoName) -> Endpoint {
        Endpoint::Registry(Arc::new(RegistryRepo {
            client,
            repo,
            referrers_api: OnceCell::new(),
            tags: OnceCell::new(),
            sparse: OnceCell::new(),
        }))
    }

    /// For messages: `registry HOST (repository REPO)` or `OCI layout PATH`.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Registry(r) => format!("registry {} (repository {})", r.client.host(), r.repo),
            Endpoint::Layout(l) => format!("OCI layout {}", l.root().display()),
        }
    }

    /// Identifies the store blobs land in, for the run-wide ledger: a registry host, a layout.
    pub fn store_key(&self) -> String {
        match self {
            Endpoint::Registry(r) => format!("registry:{}", r.client.host()),
            Endpoint::Layout(l) => format!("layout:{}", l.root().display()),
        }
    }

    /// The repository within the store (registries only: layouts have one namespace).
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Endpoint::Registry(r) => Some(&r.repo),
            Endpoint::Layout(_) => None,
        }
    }

    /// A manifest by reference; `None` when absent. For a layout, no reference means its only
    /// image.
    pub async fn get_manifest(
        &self,
        reference: Option<&Reference>,
    ) -> Result<Option<RawManifest>, MirrorError> {
        match self {
            Endpoint::Registry(r) => {
                let Some(reference) = reference else {
                    return Err(MirrorError::InvalidReference(
                        "a registry image needs a tag or digest".into(),
                    ));
                };
                match r.client.get_manifest(&r.repo, reference).await {
                    Ok(m) => Ok(Some(m)),
                    Err(ClientError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(MirrorError::client(format!(
                        "reading manifest {reference} from {}",
                        self.describe()
                    ))(e)),
                }
            }
            Endpoint::Layout(l) => {
                let name = match reference {
                    Some(Reference::Digest(d)) => return self.layout_manifest(l, d.clone(), None).await,
                    // A tag the ref-name grammar refuses names nothing in a layout.
                    Some(Reference::Tag(t)) => match t.as_str().parse::<RefName>() {
                        Ok(n) => Some(n),
                        Err(_) => return Ok(None),
                    },
                    None => None,
                };
                self.layout_named(l, name.as_ref()).await
            }
        }
    }

    /// The image `name` points at (a tag in a registry, a ref name in a layout); `None` when
    /// absent. Without a name: a layout's only image.
    pub async fn get_named(&self, name: Option<&ImageName>) -> Result<Option<RawManifest>, MirrorError> {
        match self {
            Endpoint::Registry(_) => {
                let tag = name.map(ImageName::to_tag).transpose()?.flatten();
                self.get_manifest(tag.map(Reference::Tag).as_ref()).await
            }
            Endpoint::Layout(l) => {
                let name = name.map(ImageName::to_ref_name).transpose()?;
                self.layout_named(l, name.as_ref()).await
            }
        }
    }

    async fn layout_named(
        &self,
        l: &OciLayout,
        name: Option<&RefName>,
    ) -> Result<Option<RawManifest>, MirrorError> {
        match l.resolve(name).await? {
            Some(desc) => self.layout_manifest(l, desc.digest, Some(desc.media_type)).await,
            None => Ok(None),
        }
    }

    async fn layout_manifest(
        &self,
        l: &OciLayout,
        digest: Digest,
        media_type: Option<String>,
    ) -> Result<Option<RawManifest>, MirrorError> {
        let Some(bytes) = l.read_manifest(&digest).await? else { return Ok(None) };
        let media_type = media_type.unwrap_or_else(|| media_type_of(&bytes));
        Ok(Some(RawManifest { digest, media_type, bytes }))
    }

    pub async fn has_manifest(&self, digest: &Digest) -> Result<bool, MirrorError> {
        match self {
            Endpoint::Registry(r) => r
                .client
                .head_manifest(&r.repo, &Reference::Digest(digest.clone()))
                .await
                .map(|m| m.is_some())
                .map_err(MirrorError::client(format!("checking manifest {digest} on {}", self.describe()))),
            Endpoint::Layout(l) => Ok(l.blob_size(digest).await?.is_some()),
        }
    }

    /// The digest a name points at, if it exists.
    pub async fn name_digest(&self, name: &ImageName) -> Result<Option<Digest>, MirrorError> {
        match self {
            Endpoint::Registry(r) => {
                let Some(tag) = name.to_tag()? else { return Ok(None) };
                r.client
                    .head_manifest(&r.repo, &Reference::Tag(tag.clone()))
                    .await
                    .map(|m| m.map(|(d, _, _)| d))
                    .map_err(MirrorError::client(format!("checking tag {tag} on {}", self.describe())))
            }
            Endpoint::Layout(l) => Ok(l.resolve(Some(&name.to_ref_name()?)).await?.map(|d| d.digest)),
        }
    }

    /// Store a manifest by digest, or under `name`. The bytes go as they are.
    pub async fn put_manifest(&self, m: &RawManifest, name: Option<&ImageName>) -> Result<(), MirrorError> {
        let what = match name {
            Some(t) => format!("pushing manifest {} as {t} to {}", m.digest, self.describe()),
            None => format!("pushing manifest {} to {}", m.digest, self.describe()),
        };
        match self {
            Endpoint::Registry(r) => {
                let reference = match name.map(ImageName::to_tag).transpose()?.flatten() {
                    Some(t) => Reference::Tag(t),
                    None => Reference::Digest(m.digest.clone()),
                };
                r.client
                    .put_manifest(&r.repo, &reference, &m.media_type, m.bytes.clone())
                    .await
                    .map(|_| ())
                    .map_err(MirrorError::client(what))
            }
            Endpoint::Layout(l) => {
                if l.blob_size(&m.digest).await?.is_none() {
                    l.write_bytes(&m.digest, m.bytes.clone()).await?;
                }
                if let Some(n) = name {
                    l.set_entry(&descriptor_of(m), Some(&n.to_ref_name()?)).await?;
                }
                Ok(())
            }
        }
    }

    /// Store a referrer so that the referrers lookup finds it: by digest in a registry; in a
    /// layout also as an untagged `index.json` entry (else nothing would reach it).
    pub async fn put_referrer(&self, m: &RawManifest, desc: &Descriptor) -> Result<(), MirrorError> {
        self.put_manifest(m, None).await?;
        if let Endpoint::Layout(l) = self {
            l.set_entry(desc, None).await?;
        }
        Ok(())
    }

    pub async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, MirrorError> {
        match self {
            Endpoint::Registry(r) => r
                .client
                .head_blob(&r.repo, digest)
                .await
                .map_err(MirrorError::client(format!("checking blob {digest} on {}", self.describe()))),
            Endpoint::Layout(l) => l.blob_size(digest).await,
        }
    }

    /// A blob's bytes from `offset`. From offset 0 the stream ends with an error unless the
    /// bytes match the digest.
    pub async fn open_blob(&self, digest: &Digest, offset: u64) -> Result<(u64, ByteStream), ClientError> {
        match self {
            Endpoint::Registry(r) => r.client.get_blob(&r.repo, digest, offset).await,
            Endpoint::Layout(l) => l.open_blob(digest, offset).await,
        }
    }

    /// Store a blob read through `open` (reopened at an offset to resume an upload). Published
    /// only once verified: the registry checks the digest on the final `PUT`, a layout before
    /// the rename.
    /// `session`: an upload a refused mount opened, used instead of opening another.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        size: u64,
        mut open: BlobOpener,
        session: Option<UploadSession>,
    ) -> Result<(), MirrorError> {
        let what = format!("copying blob {digest} to {}", self.describe());
        match self {
            Endpoint::Registry(r) => match session {
                Some(s) => r.client.push_blob_in(s, &r.repo, digest, size, open).await,
                None => r.client.push_blob_resumable(&r.repo, digest, size, open).await,
            }
            .map_err(MirrorError::client(what)),
            Endpoint::Layout(l) => {
                // Opened at offset 0, the stream is verified against the digest as it flows
                // (registry `get_blob`, layout `open_blob`), so the layout need not hash it again.
                let stream = open(0).await.map_err(MirrorError::client(what))?;
                l.write_verified_blob(digest, size, stream).await
            }
        }
    }

    /// Cross-repository mount within the same registry; `false` when not possible.
    pub async fn mount(&self, digest: &Digest, from: &RepoName) -> Result<bool, MirrorError> {
        match self {
            Endpoint::Registry(r) => r.client.mount_blob(&r.repo, digest, from).await.map_err(
                MirrorError::client(format!("mounting blob {digest} from {from} on {}", self.describe())),
            ),
            Endpoint::Layout(_) => Ok(false),
        }
    }

    /// A mount that keeps the upload session a registry opens when it cannot mount; `None`
    /// for a layout (nothing to mount from).
    pub async fn mount_or_start(
        &self,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<Option<Mounted>, MirrorError> {
        match self {
            Endpoint::Registry(r) => r.client.mount_or_start(&r.repo, digest, from).await.map(Some).map_err(
                MirrorError::client(format!("mounting blob {digest} from {from} on {}", self.describe())),
            ),
            Endpoint::Layout(_) => Ok(None),
        }
    }

    /// Referrers of `subject` through the referrers API; `None` when there is no such API.
    pub async fn referrers(&self, subject: &Digest) -> Result<Option<Vec<Descriptor>>, MirrorError> {
        match self {
            Endpoint::Registry(r) => {
                let list = r.client.referrers(&r.repo, subject, None).await.map_err(MirrorError::client(
                    format!("listing referrers of {subject} on {}", self.describe()),
                ))?;
                let _ = r.referrers_api.set(list.is_some());
                Ok(list)
            }
            Endpoint::Layout(l) => Ok(Some(l.referrers(subject).await?)),
        }
    }

    /// Does this endpoint find referrers by their `subject` (so no tag-schema index is needed)?
    pub async fn has_referrers_api(&self, probe: &Digest) -> Result<bool, MirrorError> {
        match self {
            Endpoint::Registry(r) => {
                if let Some(known) = r.referrers_api.get() {
                    return Ok(*known);
                }
                Ok(self.referrers(probe).await?.is_some())
            }
            Endpoint::Layout(_) => Ok(true),
        }
    }

    /// Every tag, listed once (an absent repository has none).
    pub async fn tags(&self) -> Result<Arc<Vec<String>>, MirrorError> {
        match self {
            Endpoint::Registry(r) => r
                .tags
                .get_or_try_init(|| async {
                    match r.client.list_tags(&r.repo).await {
                        Ok(t) => Ok(Arc::new(t)),
                        Err(ClientError::NotFound { .. }) => Ok(Arc::new(Vec::new())),
                        Err(e) => Err(MirrorError::client(format!("listing tags of {}", self.describe()))(e)),
                    }
                })
                .await
                .cloned(),
            Endpoint::Layout(l) => l.ref_names_shared().await,
        }
    }

    /// `X-Sparse-Manifest-Support` of a registry (`None`: it does not say); layouts hold
    /// sparse indexes by nature.
    pub async fn sparse_support(&self) -> Result<Option<bool>, MirrorError> {
        match self {
            Endpoint::Registry(r) => r
                .sparse
                .get_or_try_init(|| async {
                    r.client
                        .ping()
                        .await
                        .map(|p| p.sparse_manifest_support)
                        .map_err(MirrorError::client(format!("contacting {}", self.describe())))
                })
                .await
                .copied(),
            Endpoint::Layout(_) => Ok(Some(true)),
        }
    }

    /// The registry host, for messages about what it answered.
    pub fn host(&self) -> Option<&str> {
        match self {
            Endpoint::Registry(r) => Some(r.client.host()),
            Endpoint::Layout(_) => None,
        }
    }
}

/// The descriptor of a manifest (for `index.json`).
pub(crate) fn descriptor_of(m: &RawManifest) -> Descriptor {
    Descriptor {
        media_type: m.media_type.clone(),
        digest: m.digest.clone(),
        size: m.bytes.len() as u64,
        urls: None,
        annotations: None,
        platform: None,
        artifact_type: None,
        data: None,
    }
}

/// The media type a manifest declares, or that its shape implies.
pub(crate) fn media_type_of(bytes: &Bytes) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Head>(bytes) {
        Ok(Head { media_type: Some(m), .. }) => m,
        Ok(Head { manifests: Some(_), .. }) => media_types::OCI_INDEX.to_owned(),
        _ => media_types::OCI_MANIFEST.to_owned(),
    }
}
