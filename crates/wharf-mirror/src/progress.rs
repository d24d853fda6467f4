//! Progress callbacks: the engine reports, the caller (CLI bars, log lines, nothing) shows.

use wharf_oci::Digest;

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// Sent to the destination (bytes).
    Copied(u64),
    /// The destination already had it.
    Existing,
    /// Mounted from another repository of the destination registry.
    Mounted,
    Failed,
}

/// Called from the engine's tasks (so `Send + Sync`); every method has a no-op default.
pub trait Progress: Send + Sync {
    /// A copy of one image starts.
    fn image_started(&self, _source: &str, _destination: &str) {}
    /// A blob transfer starts (`size` bytes in total).
    fn blob_started(&self, _digest: &Digest, _size: u64) {}
    /// `bytes` more bytes of the blob went through.
    fn blob_progress(&self, _digest: &Digest, _bytes: u64) {}
    fn blob_done(&self, _digest: &Digest, _outcome: BlobOutcome) {}
    /// A line worth showing (what is selected, skipped, warned about).
    fn message(&self, _text: &str) {}
}

/// Shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}
