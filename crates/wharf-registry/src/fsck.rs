//! `fsck`: re-hash stored content and check the metadata against storage.
//!
//! Checks, each problem reported with its digest and the repositories concerned:
//!
//! - every blob file hashes to its name (its digest), read as a stream in 1 MiB chunks, so
//!   memory does not grow with blob size;
//! - every linked blob has a file, of the size its `blobs` row records;
//! - every stored manifest's bytes hash to its digest;
//! - every config and layer a manifest references is linked to the manifest's repository.
//!
//! Read-only, and safe while the registry runs: a blob that garbage collection deletes while
//! fsck looks is re-checked before it is reported. Files no repository links (garbage to be
//! collected) are hashed too but are not a problem.

use std::fmt::Display;

use futures_util::StreamExt;
use wharf_metadata::{BlobLink, MetadataStore};
use wharf_oci::{Digest, RepoName};
use wharf_storage::BlobStore;

use crate::Registry;
use crate::error::Result;

/// Links read per query.
const LINK_PAGE: u32 = 1000;
/// Manifests read per query (a manifest is at most 4 MiB).
const MANIFEST_PAGE: u32 = 16;

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A blob file's content does not hash to its name.
    BlobCorrupt,
    /// A blob file could not be read to the end.
    BlobUnreadable,
    /// A linked blob has no file.
    BlobMissing,
    /// A linked blob's file is not the size its `blobs` row records.
    BlobSizeMismatch,
    /// A manifest's stored bytes do not hash to its digest.
    ManifestCorrupt,
    /// A manifest references a blob that is not linked to its repository.
    ReferenceUnlinked,
}

/// One problem, by digest and repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FsckProblem {
    pub kind: ProblemKind,
    /// The blob or manifest concerned.
    pub digest: Digest,
    /// Repositories that link the blob, or hold the manifest, sorted.
    #[serde(serialize_with = "display_all")]
    pub repositories: Vec<RepoName>,
    /// What was found, for a person.
    pub detail: String,
}

impl Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            ProblemKind::BlobCorrupt => "corrupt blob",
            ProblemKind::BlobUnreadable => "unreadable blob",
            ProblemKind::BlobMissing => "missing blob",
            ProblemKind::BlobSizeMismatch => "blob of the wrong size",
            ProblemKind::ManifestCorrupt => "corrupt manifest",
            ProblemKind::ReferenceUnlinked => "unlinked blob reference",
        };
        write!(f, "{what} {}", self.digest)?;
        if self.repositories.is_empty() {
            write!(f, " (linked nowhere)")?;
        } else {
            let repos: Vec<&str> = self.repositories.iter().map(RepoName::as_str).collect();
            write!(f, " in {}", repos.join(", "))?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What fsck looked at and what it found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    pub bytes_hashed: u64,
    pub links_checked: u64,
    pub manifests_checked: u64,
    pub problems: Vec<FsckProblem>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for logs and the terminal.
    pub fn summary(&self) -> String {
        format!(
            "checked {} blob file(s) ({} bytes), {} blob link(s), {} manifest(s): {} problem(s)",
            self.blobs_checked,
            self.bytes_hashed,
            self.links_checked,
            self.manifests_checked,
            self.problems.len()
        )
    }
}

fn display_all<S: serde::Serializer>(v: &[RepoName], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(RepoName::as_str))
}

/// Runs every check over the registry's stores.
pub async fn fsck_registry(registry: &Registry) -> Result<FsckReport> {
    fsck(registry.blob_store(), registry.metadata()).await
}

/// Runs every check (see the module docs).
pub async fn fsck(blobs: &BlobStore, meta: &MetadataStore) -> Result<FsckReport> {
    let mut report = FsckReport::default();
    check_blob_files(blobs, meta, &mut report).await?;
    check_links(blobs, meta, &mut report).await?;
    check_manifests(meta, &mut report).await?;
    for r in meta.unlinked_references().await? {
        report.problems.push(FsckProblem {
            kind: ProblemKind::ReferenceUnlinked,
            digest: r.blob,
            repositories: vec![r.repo],
            detail: format!("manifest {} references it, but it is not linked to the repository", r.manifest),
        });
    }
    Ok(report)
}

async fn check_blob_files(blobs: &BlobStore, meta: &MetadataStore, report: &mut FsckReport) -> Result<()> {
    for digest in blobs.list_blobs().await? {
        // Gone since the listing (garbage collection): nothing to check.
        let Some(read) = blobs.read(&digest, None).await? else { continue };
        let mut body = read.body;
        let mut hasher = digest.algorithm().hasher();
        let mut failed = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    report.bytes_hashed += bytes.len() as u64;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        report.blobs_checked += 1;
        let problem = match failed {
            Some(e) => Some((ProblemKind::BlobUnreadable, format!("reading the file failed: {e}"))),
            None => {
                let actual = hasher.finish();
                (actual != digest)
                    .then(|| (ProblemKind::BlobCorrupt, format!("the file's content hashes to {actual}")))
            }
        };
        if let Some((kind, detail)) = problem {
            let repositories = meta.repos_with_blob(&digest).await?;
            report.problems.push(FsckProblem { kind, digest, repositories, detail });
        }
    }
    Ok(())
}

async fn check_links(blobs: &BlobStore, meta: &MetadataStore, report: &mut FsckReport) -> Result<()> {
    // Links come ordered by digest: gather each blob's repositories, then check its file once.
    let mut group: Option<(Digest, u64, Vec<RepoName>)> = None;
    let mut after: Option<BlobLink> = None;
    loop {
        let page = meta.blob_links_page(after.as_ref().map(|l| (&l.digest, &l.repo)), LINK_PAGE).await?;
        let done = page.len() < LINK_PAGE as usize;
        for link in &page {
            report.links_checked += 1;
            match &mut group {
                Some((d, _, repos)) if *d == link.digest => repos.push(link.repo.clone()),
                _ => {
                    if let Some((d, size, repos)) = group.take() {
                        check_linked_blob(blobs, meta, d, size, repos, report).await?;
                    }
                    group = Some((link.digest.clone(), link.size, vec![link.repo.clone()]));
                }
            }
        }
        after = page.into_iter().last().or(after);
        if done {
            break;
        }
    }
    if let Some((d, size, repos)) = group {
        check_linked_blob(blobs, meta, d, size, repos, report).await?;
    }
    Ok(())
}

async fn check_linked_blob(
    blobs: &BlobStore,
    meta: &MetadataStore,
    digest: Digest,
    size: u64,
    repositories: Vec<RepoName>,
    report: &mut FsckReport,
) -> Result<()> {
    let problem = match blobs.stat(&digest).await? {
        Some(actual) if actual == size => return Ok(()),
        Some(actual) => (
            ProblemKind::BlobSizeMismatch,
            format!("the file has {actual} bytes, the metadata records {size}"),
        ),
        None => {
            // Unlinked and collected since the links were read? Then it is not a problem.
            let repositories = meta.repos_with_blob(&digest).await?;
            if repositories.is_empty() || blobs.stat(&digest).await?.is_some() {
                return Ok(());
            }
            report.problems.push(FsckProblem {
                kind: ProblemKind::BlobMissing,
                digest,
                repositories,
                detail: format!("linked ({size} bytes), but its file is not in storage"),
            });
            return Ok(());
        }
    };
    report.problems.push(FsckProblem { kind: problem.0, digest, repositories, detail: problem.1 });
    Ok(())
}

async fn check_manifests(meta: &MetadataStore, report: &mut FsckReport) -> Result<()> {
    let mut after: Option<(RepoName, Digest)> = None;
    loop {
        let page = meta.manifests_page(after.as_ref().map(|(r, d)| (r, d)), MANIFEST_PAGE).await?;
        let done = page.len() < MANIFEST_PAGE as usize;
        for (repo, m) in &page {
            report.manifests_checked += 1;
            if !m.digest.verifies(&m.content) {
                let actual = Digest::compute(m.digest.algorithm(), &m.content);
                report.problems.push(FsckProblem {
                    kind: ProblemKind::ManifestCorrupt,
                    digest: m.digest.clone(),
                    repositories: vec![repo.clone()],
                    detail: format!("the stored bytes ({}) hash to {actual}", m.media_type),
                });
            }
        }
        if let Some((repo, m)) = page.into_iter().last() {
            after = Some((repo, m.digest));
        }
        if done {
            break;
        }
    }
    Ok(())
}
