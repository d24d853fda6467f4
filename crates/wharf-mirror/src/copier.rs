//! The copy engine: one algorithm for every pair of transports (DESIGN.md, "The mirror").

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use wharf_client::{ClientOptions, RawManifest, RegistryClient, credentials_for};
use wharf_oci::{Manifest, Platform, Tag};

use crate::endpoint::Endpoint;
use crate::image_ref::{DOCKER_HUB, DOCKER_HUB_API};
use crate::layout::OciLayout;
use crate::{BlobLedger, CopyReport, ImageRef, ImageReport, MirrorError, NoProgress, Progress, archive};

/// How to copy.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Platforms to copy from an index (`os/arch[/variant]`); empty means all.
    pub platforms: Vec<Platform>,
    /// Copy every platform (overrides `platforms`).
    pub all_platforms: bool,
    /// When the destination refuses a sparse index, write a new index listing only the
    /// children it will hold (a new digest). Never done unless asked.
    pub rewrite_index: bool,
    /// Do not copy signatures, SBOMs and other referrers.
    pub no_referrers: bool,
    /// Blobs moved in parallel.
    pub jobs: usize,
    pub src_client: ClientOptions,
    pub dest_client: ClientOptions,
    /// Look credentials up in the auth files (`wharf_client::credentials_for`) for hosts
    /// whose client options carry none.
    pub lookup_credentials: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platforms: Vec::new(),
            all_platforms: false,
            rewrite_index: false,
            no_referrers: false,
            jobs: 4,
            src_client: ClientOptions::default(),
            dest_client: ClientOptions::default(),
            lookup_credentials: true,
        }
    }
}

/// Copy one image. For many copies in one run, use a [`Copier`] (shared ledger and clients).
pub async fn copy(
    src: &ImageRef,
    dst: &ImageRef,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<CopyReport, MirrorError> {
    Copier::new(opts.clone(), progress).copy(src, dst).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Role {
    Source,
    Destination,
}

/// A layout the run reads or writes; for an archive, the temporary layout behind it.
struct LayoutHandle {
    layout: Arc<OciLayout>,
    /// For a destination archive: the file to write the layout back to.
    archive: Option<PathBuf>,
    /// Serialises writing the archive back.
    pack: tokio::sync::Mutex<()>,
    _tmp: Option<tempfile::TempDir>,
}

/// Runs copies that share a [`BlobLedger`], registry clients (connections, tokens) and
/// opened layouts and archives.
pub struct Copier {
    opts: CopyOptions,
    progress: Arc<dyn Progress>,
    ledger: Arc<BlobLedger>,
    clients: Mutex<HashMap<(String, Role), RegistryClient>>,
    layouts: tokio::sync::Mutex<HashMap<(PathBuf, Role), Arc<LayoutHandle>>>,
}

impl Copier {
    pub fn new(opts: CopyOptions, progress: Arc<dyn Progress>) -> Copier {
        Copier {
            opts,
            progress,
            ledger: Arc::new(BlobLedger::new()),
            clients: Mutex::new(HashMap::new()),
            layouts: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A copier without progress output.
    pub fn quiet(opts: CopyOptions) -> Copier {
        Copier::new(opts, Arc::new(NoProgress))
    }

    /// Share another run's ledger (e.g. one ledger for a whole `sync`).
    pub fn with_ledger(mut self, ledger: Arc<BlobLedger>) -> Copier {
        self.ledger = ledger;
        self
    }

    pub fn ledger(&self) -> &Arc<BlobLedger> {
        &self.ledger
    }

    pub fn options(&self) -> &CopyOptions {
        &self.opts
    }

    /// Copy `src` to `dst` with the options' platform filter.
    pub async fn copy(&self, src: &ImageRef, dst: &ImageRef) -> Result<CopyReport, MirrorError> {
        let platforms = if self.opts.all_platforms { Vec::new() } else { self.opts.platforms.clone() };
        self.copy_platforms(src, dst, &platforms).await
    }

    /// Copy `src` to `dst` with these platforms (empty: all), whatever the options say.
    ///
    /// The destination tag is `dst`'s tag; without one, the source's tag (`latest` for a
    /// registry source named without tag or digest); a source named by digest alone is
    /// copied by digest, untagged.
    pub async fn copy_platforms(
        &self,
        src: &ImageRef,
        dst: &ImageRef,
        platforms: &[Platform],
    ) -> Result<CopyReport, MirrorError> {
        self.progress.image_started(&src.to_string(), &dst.to_string());
        let (src_ep, _) = self.endpoint(src, Role::Source).await?;
        let (dst_ep, dst_handle) = self.endpoint(dst, Role::Destination).await?;
        let job = Job::new(self, src_ep, dst_ep);
        let top = job.src.get_manifest(src.source_reference().as_ref()).await?.ok_or_else(|| {
            MirrorError::NotFound(format!("image {src} not found ({})", job.src.describe()))
        })?;
        if let ImageRef::Docker { digest: Some(want), .. } = dst
            && *want != top.digest
        {
            return Err(MirrorError::InvalidReference(format!(
                "destination {dst} names digest {want}, but the source image is {}",
                top.digest
            )));
        }
        let parsed = parse_manifest(&top, &job.src)?;
        let dest_tag = dst.tag().cloned().or_else(|| match dst {
            ImageRef::Docker { digest: Some(_), .. } => None,
            _ => src.effective_tag(),
        });
        let mut image = ImageReport {
            source: src.to_string(),
            destination: dst.to_string(),
            source_digest: top.digest.clone(),
            destination_digest: top.digest.clone(),
            media_type: top.media_type.clone(),
            platforms_copied: Vec::new(),
            platforms_absent_at_source: Vec::new(),
            platforms_filtered: Vec::new(),
            referrers_copied: 0,
            rewritten: false,
        };
        let pushed = if parsed.is_index() {
            job.copy_index(top, &parsed, platforms, dst, &mut image).await?
        } else {
            job.copy_single(top).await?
        };
        job.publish(&pushed, dest_tag.as_ref()).await?;
        image.destination_digest = pushed.digest.clone();
        image.referrers_copied = job.referrers.load(Ordering::Relaxed);
        if let Some(h) = dst_handle {
            self.write_archive(&h).await?;
        }
        Ok(job.into_report(image))
    }

    fn client(&self, host: &str, role: Role) -> Result<RegistryClient, MirrorError> {
        let key = (host.to_owned(), role);
        if let Some(c) = self.clients.lock().expect("not poisoned").get(&key) {
            return Ok(c.clone());
        }
        let mut options =
            if role == Role::Source { self.opts.src_client.clone() } else { self.opts.dest_client.clone() };
        if options.credentials.is_none() && self.opts.lookup_credentials {
            options.credentials = credentials_for(host)
                .map_err(MirrorError::client(format!("reading the credentials for {host}")))?;
        }
        let api_host = if host == DOCKER_HUB { DOCKER_HUB_API } else { host };
        let client = RegistryClient::new(api_host, options)
            .map_err(MirrorError::client("creating a registry client"))?;
        self.clients.lock().expect("not poisoned").insert(key, client.clone());
        Ok(client)
    }

    /// The endpoint for an image reference, and for a destination archive the handle to write
    /// back when the copy is done.
    async fn endpoint(
        &self,
        r: &ImageRef,
        role: Role,
    ) -> Result<(Endpoint, Option<Arc<LayoutHandle>>), MirrorError> {
        match r {
            ImageRef::Docker { host, repo, .. } => {
                Ok((Endpoint::registry(self.client(host, role)?, repo.clone()), None))
            }
            ImageRef::Oci { path, .. } => {
                let h = self.layout(path, role, false).await?;
                Ok((Endpoint::Layout(h.layout.clone()), None))
            }
            ImageRef::OciArchive { path, .. } => {
                let h = self.layout(path, role, true).await?;
                let out = (role == Role::Destination).then(|| h.clone());
                Ok((Endpoint::Layout(h.layout.clone()), out))
            }
        }
    }

    /// Open (once per run) the layout at `path`, or the temporary layout of the archive there.
    async fn layout(&self, path: &Path, role: Role, archive: bool) -> Result<Arc<LayoutHandle>, MirrorError> {
        let abs =
            std::path::absolute(path).map_err(MirrorError::io(format!("resolving {}", path.display())))?;
        let mut layouts = self.layouts.lock().await;
        if let Some(h) = layouts.get(&(abs.clone(), role)) {
            return Ok(h.clone());
        }
        let handle = if archive {
            let tmp = tempfile::Builder::new()
                .prefix("wharf-oci-archive-")
                .tempdir()
                .map_err(MirrorError::io("creating a temporary directory"))?;
            let exists = tokio::fs::metadata(&abs).await.is_ok();
            if role == Role::Source && !exists {
                return Err(MirrorError::NotFound(format!("OCI archive {} does not exist", abs.display())));
            }
            if exists {
                // A destination archive that exists is added to, not replaced.
                archive::extract(&abs, tmp.path()).await?;
            }
            let layout = match role {
                Role::Source => OciLayout::open(tmp.path()).await?,
                Role::Destination => OciLayout::create(tmp.path()).await?,
            };
            LayoutHandle {
                layout: Arc::new(layout),
                archive: (role == Role::Destination).then(|| abs.clone()),
                pack: tokio::sync::Mutex::new(()),
                _tmp: Some(tmp),
            }
        } else {
            let layout = match role {
                Role::Source => OciLayout::open(&abs).await?,
                Role::Destination => OciLayout::create(&abs).await?,
            };
            LayoutHandle {
                layout: Arc::new(layout),
                archive: None,
                pack: tokio::sync::Mutex::new(()),
                _tmp: None,
            }
        };
        let handle = Arc::new(handle);
        layouts.insert((abs, role), handle.clone());
        Ok(handle)
    }

    async fn write_archive(&self, h: &LayoutHandle) -> Result<(), MirrorError> {
        let Some(file) = &h.archive else { return Ok(()) };
        let _turn = h.pack.lock().await;
        self.progress.message(&format!("writing {}", file.display()));
        archive::pack(h.layout.root(), file).await
    }
}

/// Parse manifest bytes, naming where they came from on failure.
pub(crate) fn parse_manifest(m: &RawManifest, from: &Endpoint) -> Result<Manifest, MirrorError> {
    Manifest::parse(Some(&m.media_type), &m.bytes).map_err(|e| {
        MirrorError::Invalid(format!("manifest {} from {} is not usable: {e}", m.digest, from.describe()))
    })
}

/// The state of one image copy: both ends and its counters.
pub(crate) struct Job<'a> {
    pub copier: &'a Copier,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub copied: AtomicU64,
    pub existing: AtomicU64,
    pub filtered: AtomicU64,
    pub referrers: AtomicUsize,
    pub warnings: Mutex<Vec<String>>,
}

impl<'a> Job<'a> {
    fn new(copier: &'a Copier, src: Endpoint, dst: Endpoint) -> Job<'a> {
        Job {
            copier,
            src,
            dst,
            copied: AtomicU64::new(0),
            existing: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            referrers: AtomicUsize::new(0),
            warnings: Mutex::new(Vec::new()),
        }
    }

    pub fn opts(&self) -> &CopyOptions {
        &self.copier.opts
    }

    pub fn progress(&self) -> &Arc<dyn Progress> {
        &self.copier.progress
    }

    pub fn ledger(&self) -> &BlobLedger {
        &self.copier.ledger
    }

    pub fn jobs(&self) -> usize {
        self.opts().jobs.max(1)
    }

    pub fn warn(&self, text: String) {
        self.progress().message(&format!("warning: {text}"));
        self.warnings.lock().expect("not poisoned").push(text);
    }

    pub fn add_copied(&self, n: u64) {
        self.copied.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_existing(&self, n: u64) {
        self.existing.fetch_add(n, Ordering::Relaxed);
    }

    /// Point `tag` at the pushed manifest unless it already does. Untagged, a registry holds
    /// it by digest already; a layout needs an `index.json` entry to reach it.
    async fn publish(&self, pushed: &RawManifest, tag: Option<&Tag>) -> Result<(), MirrorError> {
        match (tag, &self.dst) {
            (Some(tag), _) => {
                if self.dst.tag_digest(tag).await? != Some(pushed.digest.clone()) {
                    self.dst.put_manifest(pushed, Some(tag)).await?;
                }
            }
            (None, Endpoint::Layout(l)) => {
                l.set_entry(&crate::endpoint::descriptor_of(pushed), None).await?;
            }
            (None, Endpoint::Registry(_)) => {}
        }
        Ok(())
    }

    /// A single image manifest (or an artifact): blobs, manifest, referrers.
    async fn copy_single(&self, top: RawManifest) -> Result<RawManifest, MirrorError> {
        let mut tree = crate::transfer::Tree::default();
        self.gather(top.clone(), &mut tree).await?;
        self.transfer(tree).await?;
        if !self.opts().no_referrers {
            self.copy_referrers(&top.digest).await?;
        }
        Ok(top)
    }

    fn into_report(self, image: ImageReport) -> CopyReport {
        CopyReport {
            bytes_copied: self.copied.into_inner(),
            bytes_existing: self.existing.into_inner(),
            bytes_filtered: self.filtered.into_inner(),
            images: vec![image],
            warnings: self.warnings.into_inner().expect("not poisoned"),
        }
    }
}
