//! The state of one image copy: both ends, its counters, and the steps every transport shares.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use wharf_client::RawManifest;
use wharf_oci::{Digest, Manifest};

use crate::endpoint::{Endpoint, descriptor_of};
use crate::{BlobLedger, Copier, CopyOptions, CopyReport, ImageName, ImageReport, MirrorError, Progress};

/// Parse manifest bytes, naming where they came from on failure.
pub(crate) fn parse_manifest(m: &RawManifest, from: &Endpoint) -> Result<Manifest, MirrorError> {
    Manifest::parse(Some(&m.media_type), &m.bytes).map_err(|e| {
        MirrorError::Invalid(format!("manifest {} from {} is not usable: {e}", m.digest, from.describe()))
    })
}

pub(crate) struct Job<'a> {
    pub copier: &'a Copier,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub copied: AtomicU64,
    pub existing: AtomicU64,
    pub filtered: AtomicU64,
    pub referrers: AtomicUsize,
    pub warnings: Mutex<Vec<String>>,
    /// Manifests this job stored at the destination by digest (they were not there before):
    /// no tag there can point at one yet, so publishing it needs no look at the tag.
    pub pushed: Mutex<HashSet<Digest>>,
}

impl<'a> Job<'a> {
    pub fn new(copier: &'a Copier, src: Endpoint, dst: Endpoint) -> Job<'a> {
        Job {
            copier,
            src,
            dst,
            copied: AtomicU64::new(0),
            existing: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            referrers: AtomicUsize::new(0),
            warnings: Mutex::new(Vec::new()),
            pushed: Mutex::new(HashSet::new()),
        }
    }

    pub fn opts(&self) -> &CopyOptions {
        &self.copier.opts
    }

    pub fn dry_run(&self) -> bool {
        self.copier.opts.dry_run
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

    /// Does the destination hold this manifest (or, in a dry run, would it by now)?
    pub async fn dest_has_manifest(&self, digest: &Digest) -> Result<bool, MirrorError> {
        if self.is_planned(digest) {
            return Ok(true);
        }
        self.dst.has_manifest(digest).await
    }

    /// In a dry run: has an earlier plan of this run pushed this manifest to the destination?
    pub fn is_planned(&self, digest: &Digest) -> bool {
        self.dry_run() && self.copier.is_planned(&self.dst.store_key(), self.dst.repo(), digest)
    }

    /// Record that a dry run would have pushed this manifest.
    pub fn plan_manifest(&self, digest: &Digest) {
        self.copier.plan(&self.dst.store_key(), self.dst.repo(), digest);
    }

    /// Point `name` at the pushed manifest unless it already does; returns whether it moved
    /// (or, in a dry run, would). Unnamed, a registry holds it by digest already; a layout
    /// needs an `index.json` entry to reach it.
    pub async fn publish(&self, pushed: &RawManifest, name: Option<&ImageName>) -> Result<bool, MirrorError> {
        match (name, &self.dst) {
            (Some(name), _) => {
                // A registry needs no HEAD of the tag for a manifest this job just stored: every
                // request counts when hundreds of images are synced.
                let fresh = matches!(self.dst, Endpoint::Registry(_))
                    && self.pushed.lock().expect("not poisoned").contains(&pushed.digest);
                if !fresh && self.dst.name_digest(name).await? == Some(pushed.digest.clone()) {
                    return Ok(false);
                }
                if !self.dry_run() {
                    self.dst.put_manifest(pushed, Some(name)).await?;
                }
                Ok(true)
            }
            (None, Endpoint::Layout(_)) if self.dry_run() => Ok(false),
            (None, Endpoint::Layout(l)) => l.set_entry(&descriptor_of(pushed), None).await,
            (None, Endpoint::Registry(_)) => Ok(false),
        }
    }

    /// A single image manifest (or an artifact): blobs, manifest, referrers.
    pub async fn copy_single(&self, top: RawManifest) -> Result<RawManifest, MirrorError> {
        let mut tree = crate::transfer::Tree::default();
        self.gather_missing(vec![top.clone()], &mut tree).await?;
        self.transfer(tree).await?;
        if !self.opts().no_referrers {
            self.copy_referrers(&top.digest).await?;
        }
        Ok(top)
    }

    pub fn into_report(self, mut image: ImageReport) -> CopyReport {
        image.referrers_copied = self.referrers.load(Ordering::Relaxed);
        CopyReport {
            bytes_copied: self.copied.into_inner(),
            bytes_existing: self.existing.into_inner(),
            bytes_filtered: self.filtered.into_inner(),
            images: vec![image],
            warnings: self.warnings.into_inner().expect("not poisoned"),
        }
    }
}
