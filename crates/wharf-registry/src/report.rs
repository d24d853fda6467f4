//! The presence report of an index: the data behind `/_wharf/index/<ref>`, `wharf
//! inspect` and storage accounting; and the registry-wide storage report behind
//! `/v2/_wharf/storage` and `wharf report`, computed from the same figures.

use std::collections::BTreeMap;

use wharf_metadata::{ChildPresence, StorageFigures};
use wharf_oci::{Digest, RepoName};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChildReport {
    pub digest: Digest,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `os/arch[/variant]`, normalised; absent when the descriptor has none.
    pub platform: Option<String>,
    /// Size of the child manifest itself (from the index descriptor).
    pub size: u64,
    pub present: bool,
    /// Bytes this child occupies here: its manifest plus its config and layers.
    pub stored_bytes: Option<u64>,
    /// For a docker buildx attestation: the digest of the child it describes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation_for: Option<Digest>,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Signatures, SBOMs and attestations stored here whose subject is this child.
    #[serde(default)]
    pub referrers: Vec<ReferrerReport>,
}

/// A manifest whose `subject` is an index or one of its children.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReferrerReport {
    pub digest: Digest,
    #[serde(rename = "artifactType", skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub size: u64,
}

impl ChildReport {
    pub fn from_presence(
        child: ChildPresence,
        stored_bytes: Option<u64>,
        referrers: Vec<ReferrerReport>,
    ) -> ChildReport {
        let attestation_for = child
            .annotations_json
            .as_deref()
            .and_then(|j| serde_json::from_str::<BTreeMap<String, String>>(j).ok())
            .and_then(|a| wharf_oci::manifest::attestation_subject(&a));
        ChildReport {
            digest: child.digest,
            media_type: child.media_type,
            platform: child.platform,
            size: child.size,
            present: child.present,
            stored_bytes,
            attestation_for,
            artifact_type: child.artifact_type,
            referrers,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct IndexReport {
    pub repository: String,
    pub digest: Digest,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The repository's index policy, e.g. `sparse` or `require [linux/amd64]`.
    pub policy: String,
    /// Referrers of the index itself.
    pub referrers: Vec<ReferrerReport>,
    pub children: Vec<ChildReport>,
    pub present_children: usize,
    pub absent_children: usize,
    /// Bytes stored for this index: the index itself and every present child.
    pub present_bytes: u64,
    /// Bytes the complete index would need. Exact when every child is present; otherwise
    /// an estimate that assumes each absent image weighs the average present one.
    pub full_bytes: u64,
    pub full_bytes_exact: bool,
}

impl IndexReport {
    pub fn new(
        repo: RepoName,
        digest: Digest,
        media_type: String,
        size: u64,
        policy: String,
        referrers: Vec<ReferrerReport>,
        children: Vec<ChildReport>,
    ) -> IndexReport {
        let present: Vec<&ChildReport> = children.iter().filter(|c| c.present).collect();
        let present_child_bytes = present.iter().filter_map(|c| c.stored_bytes).sum::<u64>();
        let present_bytes = size + present_child_bytes;
        let absent = children.len() - present.len();
        let absent_estimate = absent_estimate(
            present_child_bytes,
            present.len() as u64,
            children.iter().filter(|c| !c.present).map(|c| c.size),
        );
        IndexReport {
            repository: repo.to_string(),
            digest,
            media_type,
            policy,
            referrers,
            present_children: present.len(),
            absent_children: absent,
            present_bytes,
            full_bytes: present_bytes + absent_estimate,
            full_bytes_exact: absent == 0,
            children,
        }
    }
}

/// What the absent children of an index would add to it: each absent image is assumed to
/// weigh the average present one (or its own manifest size, when that is more). The one
/// estimate behind both the index report and the storage report.
fn absent_estimate(
    present_child_bytes: u64,
    present_children: u64,
    absent_sizes: impl IntoIterator<Item = u64>,
) -> u64 {
    let average = present_child_bytes.checked_div(present_children).unwrap_or(0);
    absent_sizes.into_iter().map(|s| s.max(average)).sum()
}

/// The registry-wide storage report (`GET /v2/_wharf/storage`): per repository what it holds
/// and what its indexes would need complete, and totals.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StorageReport {
    /// Repositories the report covers, sorted bytewise.
    pub repositories: Vec<RepoStorageReport>,
    pub totals: StorageTotals,
    /// True when repositories the caller may not pull were left out: the totals then cover
    /// only the listed ones, and `unlinked_blobs`/`unlinked_blob_bytes` are absent.
    pub filtered: bool,
}

/// One repository of the storage report.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoStorageReport {
    pub repository: String,
    /// Manifests of every kind (images, indexes, signatures, other artifacts).
    pub manifests: u64,
    pub tags: u64,
    /// Image indexes and Docker manifest lists.
    pub indexes: u64,
    /// Indexes with at least one absent child.
    pub sparse_indexes: u64,
    /// Blobs readable in the repository (pushed, mounted or referenced here) and their bytes;
    /// a blob shared with other repositories counts in each.
    pub linked_blobs: u64,
    pub linked_blob_bytes: u64,
    /// The sum of the `present_bytes` of its index reports: each index and its present
    /// children with their config and layers (a layer two platforms share counts twice).
    pub present_bytes: u64,
    /// The sum of the `full_bytes` of its index reports: what the indexes would need complete.
    pub full_bytes: u64,
    /// False when any index has absent children, whose size is then estimated.
    pub full_bytes_exact: bool,
}

/// The storage report's totals over the repositories it lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StorageTotals {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub indexes: u64,
    pub sparse_indexes: u64,
    /// Sums over the repositories: a blob linked to three of them counts three times.
    pub linked_blobs: u64,
    pub linked_blob_bytes: u64,
    /// Distinct blobs linked to the listed repositories, each counted once however many
    /// repositories share it: the bytes the blob store holds for them.
    pub unique_blobs: u64,
    pub unique_blob_bytes: u64,
    /// Blobs in the store that no repository links (garbage collection's candidates). Only
    /// when the report covers every repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlinked_blobs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlinked_blob_bytes: Option<u64>,
    pub present_bytes: u64,
    pub full_bytes: u64,
    pub full_bytes_exact: bool,
}

impl StorageReport {
    /// The report from the metadata store's figures (see `MetadataStore::storage_figures`).
    pub fn from_figures(figures: StorageFigures) -> StorageReport {
        let mut repositories: Vec<RepoStorageReport> = figures
            .repos
            .iter()
            .map(|r| RepoStorageReport {
                repository: r.repo.to_string(),
                manifests: r.manifests,
                tags: r.tags,
                indexes: r.indexes,
                sparse_indexes: 0,
                linked_blobs: r.linked_blobs,
                linked_blob_bytes: r.linked_blob_bytes,
                // Every index counts its own bytes; its children are added below.
                present_bytes: r.index_bytes,
                full_bytes: r.index_bytes,
                full_bytes_exact: true,
            })
            .collect();
        // Both lists are sorted by repository: walk them together.
        let mut at = 0;
        for index in &figures.indexes {
            while at < repositories.len() && repositories[at].repository.as_str() < index.repo.as_str() {
                at += 1;
            }
            let Some(r) = repositories.get_mut(at).filter(|r| r.repository == index.repo.as_str()) else {
                continue;
            };
            let estimate = absent_estimate(
                index.present_bytes,
                index.present_children,
                index.absent_sizes.iter().copied(),
            );
            r.present_bytes += index.present_bytes;
            r.full_bytes += index.present_bytes + estimate;
            if !index.absent_sizes.is_empty() {
                r.sparse_indexes += 1;
                r.full_bytes_exact = false;
            }
        }
        let mut totals = StorageTotals {
            repositories: repositories.len() as u64,
            unique_blobs: figures.unique_blobs.blobs,
            unique_blob_bytes: figures.unique_blobs.bytes,
            unlinked_blobs: figures.unlinked_blobs.map(|t| t.blobs),
            unlinked_blob_bytes: figures.unlinked_blobs.map(|t| t.bytes),
            full_bytes_exact: true,
            ..StorageTotals::default()
        };
        for r in &repositories {
            totals.manifests += r.manifests;
            totals.tags += r.tags;
            totals.indexes += r.indexes;
            totals.sparse_indexes += r.sparse_indexes;
            totals.linked_blobs += r.linked_blobs;
            totals.linked_blob_bytes += r.linked_blob_bytes;
            totals.present_bytes += r.present_bytes;
            totals.full_bytes += r.full_bytes;
            totals.full_bytes_exact &= r.full_bytes_exact;
        }
        StorageReport { repositories, totals, filtered: figures.filtered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_metadata::{BlobTotals, IndexChildrenBytes, RepoStorage};

    fn repo(name: &str, indexes: u64, index_bytes: u64) -> RepoStorage {
        RepoStorage {
            repo: name.parse().unwrap(),
            manifests: indexes + 1,
            tags: 1,
            indexes,
            index_bytes,
            linked_blobs: 2,
            linked_blob_bytes: 100,
        }
    }

    fn index(name: &str, seed: &[u8], present: &[u64], absent: &[u64]) -> IndexChildrenBytes {
        IndexChildrenBytes {
            repo: name.parse().unwrap(),
            index: Digest::sha256_of(seed),
            present_children: present.len() as u64,
            present_bytes: present.iter().sum(),
            absent_sizes: absent.to_vec(),
        }
    }

    #[test]
    fn storage_report_sums_what_the_index_reports_say() {
        let figures = StorageFigures {
            repos: vec![repo("a", 0, 0), repo("b", 2, 30), repo("c", 1, 10)],
            indexes: vec![
                // b: one sparse index (the absent child is estimated at the average present
                // one, 300), one complete; c: an index with no present child.
                index("b", b"1", &[200, 400], &[50]),
                index("b", b"2", &[100], &[]),
                index("c", b"3", &[], &[7, 9]),
            ],
            unique_blobs: BlobTotals { blobs: 5, bytes: 250 },
            unlinked_blobs: None,
            filtered: true,
        };
        let r = StorageReport::from_figures(figures);
        let a = &r.repositories[0];
        assert_eq!((a.present_bytes, a.full_bytes, a.full_bytes_exact, a.sparse_indexes), (0, 0, true, 0));
        let b = &r.repositories[1];
        assert_eq!(
            (b.present_bytes, b.full_bytes, b.full_bytes_exact, b.sparse_indexes),
            (730, 1030, false, 1)
        );
        let c = &r.repositories[2];
        assert_eq!((c.present_bytes, c.full_bytes, c.sparse_indexes), (10, 26, 1));
        let t = &r.totals;
        assert_eq!((t.repositories, t.indexes, t.sparse_indexes, t.linked_blob_bytes), (3, 3, 2, 300));
        assert_eq!((t.present_bytes, t.full_bytes, t.full_bytes_exact), (740, 1056, false));
        assert_eq!((t.unique_blobs, t.unique_blob_bytes, t.unlinked_blobs), (5, 250, None));
        assert!(r.filtered);
        // The index report of b's sparse index agrees (index size 15 of the 30).
        let child = |present: bool, size: u64, stored: Option<u64>| ChildReport {
            digest: Digest::sha256_of(&size.to_le_bytes()),
            media_type: String::new(),
            platform: None,
            size,
            present,
            stored_bytes: stored,
            attestation_for: None,
            artifact_type: None,
            referrers: Vec::new(),
        };
        let one = IndexReport::new(
            "b".parse().unwrap(),
            Digest::sha256_of(b"1"),
            String::new(),
            15,
            String::new(),
            Vec::new(),
            vec![child(true, 20, Some(200)), child(true, 40, Some(400)), child(false, 50, None)],
        );
        assert_eq!((one.present_bytes, one.full_bytes), (615, 915));
    }
}
