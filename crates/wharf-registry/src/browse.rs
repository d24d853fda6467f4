//! Reads for people browsing the registry (the web UI): paged summaries of repositories and
//! tags, a manifest's bytes and referrers, and cosign's tag-scheme referrers. Like reports,
//! these look and never fill from an upstream.

use wharf_metadata::{Referrer, RepoSummary, StoredManifest, TagSummary};
use wharf_oci::{Digest, Reference, RepoName};

use crate::{Registry, RegistryError, Result};

/// The suffixes of cosign's tag scheme (`sha256-<hex>.sig` and its siblings), and what each
/// holds.
pub const COSIGN_TAG_SUFFIXES: [(&str, &str); 3] =
    [("sig", "signature"), ("att", "attestation"), ("sbom", "SBOM")];

/// A manifest stored under cosign's tag scheme for a subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagSchemeReferrer {
    pub subject: Digest,
    /// `signature`, `attestation` or `SBOM`.
    pub kind: &'static str,
    pub tag: String,
    pub digest: Digest,
}

impl Registry {
    /// Repositories whose name contains `search`, sorted, strictly after `after`, at most `n`.
    pub async fn repo_summaries(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        n: u32,
    ) -> Result<Vec<RepoSummary>> {
        Ok(self.metadata().repo_summaries(search, after, n).await?)
    }

    /// One page of the tags of `repo` containing `search`, newest first, and how many there
    /// are in all. `NameUnknown` when the repository holds nothing.
    pub async fn tag_summaries(
        &self,
        repo: &RepoName,
        search: Option<&str>,
        offset: u64,
        n: u32,
    ) -> Result<(u64, Vec<TagSummary>)> {
        let meta = self.metadata();
        let total = meta.tag_count(repo, search).await?;
        if total == 0 && !meta.repo_exists(repo).await? {
            return Err(RegistryError::NameUnknown(repo.clone()));
        }
        let page = if total == 0 { Vec::new() } else { meta.tag_summaries(repo, search, offset, n).await? };
        Ok((total, page))
    }

    /// The stored bytes of a manifest, by tag or digest, without filling or trust checks (the
    /// UI shows it; it does not serve it to a runtime).
    pub async fn browse_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        let meta = self.metadata();
        let found = match reference {
            Reference::Digest(d) => meta.get_manifest(repo, d).await?,
            Reference::Tag(t) => meta.get_tagged_manifest(repo, t).await?,
        };
        match found {
            Some(m) => Ok(m),
            None if !meta.repo_exists(repo).await? => Err(RegistryError::NameUnknown(repo.clone())),
            None => Err(RegistryError::ManifestUnknown {
                message: format!("manifest {reference} is not in repository {repo}"),
            }),
        }
    }

    /// Manifests whose `subject` is `digest` (the referrers API's rows).
    pub async fn referrer_list(&self, repo: &RepoName, digest: &Digest) -> Result<Vec<Referrer>> {
        Ok(self.metadata().referrers(repo, digest).await?)
    }

    /// Signatures, attestations and SBOMs of `subjects` stored under cosign's tag scheme, in
    /// one query.
    pub async fn tag_scheme_referrers(
        &self,
        repo: &RepoName,
        subjects: &[Digest],
    ) -> Result<Vec<TagSchemeReferrer>> {
        let mut wanted = Vec::new();
        for s in subjects {
            for (suffix, kind) in COSIGN_TAG_SUFFIXES {
                wanted.push((s.cosign_tag(suffix), s, kind));
            }
        }
        let tags: Vec<String> = wanted.iter().map(|(t, ..)| t.clone()).collect();
        let found = self.metadata().tags_among(repo, &tags).await?;
        Ok(wanted
            .into_iter()
            .filter_map(|(tag, subject, kind)| {
                let digest = found.iter().find(|(t, _)| *t == tag)?.1.clone();
                Some(TagSchemeReferrer { subject: subject.clone(), kind, tag, digest })
            })
            .collect())
    }
}
