//! The presence report of an index: the data behind `/_wharf/index/<ref>`, `wharf
//! inspect` and storage accounting.

use wharf_metadata::ChildPresence;
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
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .filter(|a| a["vnd.docker.reference.type"] == "attestation-manifest")
            .and_then(|a| a["vnd.docker.reference.digest"].as_str().and_then(|d| d.parse().ok()));
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
        let present_bytes = size + present.iter().filter_map(|c| c.stored_bytes).sum::<u64>();
        let absent = children.len() - present.len();
        let average = if present.is_empty() { 0 } else { (present_bytes - size) / present.len() as u64 };
        let absent_estimate: u64 = children.iter().filter(|c| !c.present).map(|c| c.size.max(average)).sum();
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
