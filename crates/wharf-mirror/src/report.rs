//! What a copy did, for people (the CLI summary) and scripts (`--json`).

use serde::Serialize;
use wharf_oci::Digest;

/// The result of one or more copies (a `sync` adds up many).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Bytes sent to the destination (blobs and manifests).
    pub bytes_copied: u64,
    /// Bytes the destination already had (skipped) or got by a cross-repository mount.
    pub bytes_existing: u64,
    /// Bytes of the children left out by the platform filter (manifests, configs, layers).
    pub bytes_filtered: u64,
    pub images: Vec<ImageReport>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub source: String,
    pub destination: String,
    pub source_digest: Digest,
    /// Differs from `source_digest` only when the index was rewritten.
    pub destination_digest: Digest,
    pub media_type: String,
    /// Platforms now at the destination from this copy (`os/arch[/variant]`).
    pub platforms_copied: Vec<String>,
    /// Selected platforms the (sparse) source does not hold.
    pub platforms_absent_at_source: Vec<String>,
    /// Platforms left out by the filter.
    pub platforms_filtered: Vec<String>,
    /// Signatures, SBOMs and attestations copied (or found already there).
    pub referrers_copied: usize,
    pub rewritten: bool,
    /// The destination tag (or layout name) was created or moved to this image (in a dry
    /// run: would be).
    pub tag_updated: bool,
}

impl CopyReport {
    /// Add another report's figures and entries (for runs of many copies).
    pub fn merge(&mut self, other: CopyReport) {
        self.bytes_copied += other.bytes_copied;
        self.bytes_existing += other.bytes_existing;
        self.bytes_filtered += other.bytes_filtered;
        self.images.extend(other.images);
        self.warnings.extend(other.warnings);
    }
}
