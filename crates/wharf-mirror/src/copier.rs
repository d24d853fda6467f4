//! The copy engine: one algorithm for every pair of transports (DESIGN.md, "The mirror").

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wharf_client::{ClientError, ClientOptions, RegistryClient, credentials_for};
use wharf_oci::{Digest, Platform, Reference, RepoName};

use crate::endpoint::Endpoint;
use crate::job::{Job, parse_manifest};
use crate::layouts::LayoutHandle;
use crate::trust::verify_at;
use crate::{BlobLedger, CopyReport, ImageName, ImageRef, ImageReport, MirrorError, NoProgress, Progress};

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
    /// Plan only: resolve, select, ask the destination what it has and add up sizes, exactly as
    /// a copy would, but write nothing anywhere. The report's `bytes_copied` is then what a
    /// copy would send.
    pub dry_run: bool,
    /// Split a destination `oci-archive:` into parts of at most this many bytes (`FILE`,
    /// `FILE.part2`, ...), each a complete layout holding whole images.
    pub max_archive_size: Option<u64>,
    /// Verify the source's cosign signatures with these keys (the index and each selected
    /// child) before anything is written, and refuse the copy when they do not verify.
    pub verify_keys: Option<Arc<Vec<wharf_trust::PublicKey>>>,
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
            dry_run: false,
            max_archive_size: None,
            verify_keys: None,
        }
    }
}

/// Copy one image (and write a destination archive). For many copies in one run, use a
/// [`Copier`] (shared ledger and clients).
pub async fn copy(
    src: &ImageRef,
    dst: &ImageRef,
    opts: &CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<CopyReport, MirrorError> {
    let copier = Copier::new(opts.clone(), progress);
    let mut report = copier.copy(src, dst).await?;
    report.warnings.extend(copier.finish().await?.warnings);
    Ok(report)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Source,
    Destination,
}

/// What [`Copier::finish`] wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FinishReport {
    /// Archive files written (with `--max-archive-size`, every part).
    pub archives: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

/// Runs copies that share a [`BlobLedger`], registry clients (connections, tokens) and
/// opened layouts and archives.
///
/// Destination archives are written once, by [`Copier::finish`], after the last copy: call it
/// (the free function [`copy`] does), or nothing reaches the archive file.
pub struct Copier {
    pub(crate) opts: CopyOptions,
    pub(crate) progress: Arc<dyn Progress>,
    pub(crate) ledger: Arc<BlobLedger>,
    clients: Mutex<HashMap<(String, Role), RegistryClient>>,
    /// Registry endpoints (host, repository, role), so that what an endpoint learns (tags,
    /// referrers API, sparse-index support) is learnt once per run, not once per image.
    endpoints: Mutex<HashMap<(String, RepoName, Role), Endpoint>>,
    pub(crate) layouts: tokio::sync::Mutex<HashMap<(PathBuf, Role), Arc<LayoutHandle>>>,
    /// Dry run: manifests a planned copy would have pushed (store, repository, digest), so that
    /// later plans of the same run count them as there, as a real run would find them.
    planned: Mutex<HashSet<(String, Option<RepoName>, Digest)>>,
}

impl Copier {
    pub fn new(opts: CopyOptions, progress: Arc<dyn Progress>) -> Copier {
        Copier {
            opts,
            progress,
            ledger: Arc::new(BlobLedger::new()),
            clients: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            layouts: tokio::sync::Mutex::new(HashMap::new()),
            planned: Mutex::new(HashSet::new()),
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
    /// The destination name is `dst`'s tag or layout name; without one, the source's (`latest`
    /// for a registry source named without tag or digest; a bundle name `team/app:v1` gives
    /// the registry tag `v1`); a source named by digest alone is copied by digest, untagged.
    pub async fn copy_platforms(
        &self,
        src: &ImageRef,
        dst: &ImageRef,
        platforms: &[Platform],
    ) -> Result<CopyReport, MirrorError> {
        let keys = self.opts.verify_keys.clone();
        self.copy_verified(src, dst, platforms, keys.as_deref().map(Vec::as_slice)).await
    }

    /// As [`Copier::copy_platforms`], verifying the source's signatures with `keys` (when
    /// given, whatever the options say) before anything is written to `dst`.
    pub async fn copy_verified(
        &self,
        src: &ImageRef,
        dst: &ImageRef,
        platforms: &[Platform],
        keys: Option<&[wharf_trust::PublicKey]>,
    ) -> Result<CopyReport, MirrorError> {
        self.progress.image_started(&src.to_string(), &dst.to_string());
        let dest_name = destination_name(src, dst)?;
        let src_ep = self.endpoint(src, Role::Source).await?;
        let dst_ep = self.endpoint(dst, Role::Destination).await?;
        let job = Job::new(self, src_ep, dst_ep);
        let top = match src.digest() {
            Some(d) => job.src.get_manifest(Some(&Reference::Digest(d.clone()))).await?,
            None => job.src.get_named(src.effective_name().as_ref()).await?,
        };
        let top = top.ok_or_else(|| {
            MirrorError::NotFound(format!("image {src} not found ({})", job.src.describe()))
        })?;
        if let Some(want) = dst.digest()
            && *want != top.digest
        {
            return Err(MirrorError::InvalidReference(format!(
                "destination {dst} names digest {want}, but the source image is {}",
                top.digest
            )));
        }
        let parsed = parse_manifest(&top, &job.src)?;
        if let Some(keys) = keys {
            let trust = verify_at(&job.src, src.to_string(), &top, &parsed, platforms, keys).await?;
            if !trust.is_ok() {
                return Err(MirrorError::Untrusted(format!(
                    "refusing to copy {src}: its signatures do not verify at the source, nothing was \
                     written to {dst}: {}",
                    trust.failures.join("; ")
                )));
            }
        }
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
            tag_updated: false,
        };
        let (pushed, tagged) = if parsed.is_index() {
            job.copy_index(top, &parsed, platforms, dst, dest_name.as_ref(), &mut image).await?
        } else {
            (job.copy_single(top).await?, None)
        };
        image.tag_updated = match tagged {
            Some(moved) => moved,
            None => job.publish(&pushed, dest_name.as_ref()).await?,
        };
        image.destination_digest = pushed.digest.clone();
        Ok(job.into_report(image))
    }

    /// The tags of a registry repository (every page), or the names in a layout or archive.
    /// A repository that does not exist is a `NotFound` error naming it.
    pub async fn source_tags(&self, src: &ImageRef) -> Result<Vec<String>, MirrorError> {
        match self.endpoint(src, Role::Source).await? {
            Endpoint::Registry(r) => match r.client.list_tags(&r.repo).await {
                Ok(tags) => Ok(tags),
                Err(ClientError::NotFound { message, .. }) => Err(MirrorError::NotFound(format!(
                    "repository {} not found at {}{}",
                    r.repo,
                    r.client.host(),
                    message.map(|m| format!(": {m}")).unwrap_or_default()
                ))),
                Err(e) => Err(MirrorError::client(format!("listing the tags of {src}"))(e)),
            },
            Endpoint::Layout(l) => l.ref_names().await,
        }
    }

    /// For a source layout or archive that is one part of a split bundle: (this part, how
    /// many parts), from its `index.json`.
    pub async fn bundle_part(&self, src: &ImageRef) -> Result<Option<(usize, usize)>, MirrorError> {
        let Endpoint::Layout(l) = self.endpoint(src, Role::Source).await? else { return Ok(None) };
        let a = l.index_annotations().await?;
        let number = |k: &str| a.get(k).and_then(|v| v.parse::<usize>().ok());
        Ok(number(crate::PART_ANNOTATION).zip(number(crate::PARTS_ANNOTATION)))
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
        let client =
            RegistryClient::new(host, options).map_err(MirrorError::client("creating a registry client"))?;
        self.clients.lock().expect("not poisoned").insert(key, client.clone());
        Ok(client)
    }

    /// The endpoint for an image reference.
    pub(crate) async fn endpoint(&self, r: &ImageRef, role: Role) -> Result<Endpoint, MirrorError> {
        match r {
            ImageRef::Docker { host, repo, .. } => {
                let key = (host.clone(), repo.clone(), role);
                if let Some(ep) = self.endpoints.lock().expect("not poisoned").get(&key) {
                    return Ok(ep.clone());
                }
                let ep = Endpoint::registry(self.client(host, role)?, repo.clone());
                Ok(self.endpoints.lock().expect("not poisoned").entry(key).or_insert(ep).clone())
            }
            ImageRef::Oci { path, .. } => {
                Ok(Endpoint::Layout(self.layout(path, role, false).await?.layout.clone()))
            }
            ImageRef::OciArchive { path, .. } => {
                Ok(Endpoint::Layout(self.layout(path, role, true).await?.layout.clone()))
            }
        }
    }

    /// Dry run: has a planned copy of this run "pushed" the manifest there already?
    pub(crate) fn is_planned(&self, store: &str, repo: Option<&RepoName>, digest: &Digest) -> bool {
        let key = (store.to_owned(), repo.cloned(), digest.clone());
        self.planned.lock().expect("not poisoned").contains(&key)
    }

    pub(crate) fn plan(&self, store: &str, repo: Option<&RepoName>, digest: &Digest) {
        let key = (store.to_owned(), repo.cloned(), digest.clone());
        self.planned.lock().expect("not poisoned").insert(key);
    }
}

/// The name to publish under at `dst`, in the kind `dst` holds (a tag, a layout name), or
/// `None` to store by digest only. Checked before anything moves.
fn destination_name(src: &ImageRef, dst: &ImageRef) -> Result<Option<ImageName>, MirrorError> {
    let name = match dst {
        ImageRef::Docker { tag: None, digest: Some(_), .. } => return Ok(None),
        _ => dst.name().or_else(|| src.effective_name()),
    };
    let Some(name) = name else { return Ok(None) };
    if dst.is_registry() {
        Ok(name.to_tag()?.map(ImageName::Tag))
    } else {
        Ok(Some(ImageName::Ref(name.to_ref_name()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        s.parse().unwrap()
    }

    #[test]
    fn destination_names() {
        let name = |src: &str, dst: &str| destination_name(&r(src), &r(dst)).unwrap().map(|n| n.to_string());
        assert_eq!(name("docker://h/a:v1", "oci:/b").as_deref(), Some("v1"));
        assert_eq!(name("docker://h/a", "oci:/b").as_deref(), Some("latest"));
        assert_eq!(name("docker://h/a:v1", "oci:/b:team/a:v1").as_deref(), Some("team/a:v1"));
        assert_eq!(name("oci:/b:team/a:v2", "docker://h/x").as_deref(), Some("v2"));
        assert_eq!(name("oci:/b:team/a:v2", "docker://h/x:v3").as_deref(), Some("v3"));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(name(&format!("docker://h/a@{d}"), "docker://h/x"), None);
        assert_eq!(name(&format!("oci:/b:team/a@{d}"), "docker://h/x"), None);
        assert!(destination_name(&r("oci:/b:team/a"), &r("docker://h/x")).is_err());
        assert!(destination_name(&r("docker://h/a:_odd"), &r("oci:/b")).is_err());
    }
}
