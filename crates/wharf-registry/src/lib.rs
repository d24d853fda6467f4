//! Wharf's registry operations: blobs, uploads, manifests, index policy and presence.
//!
//! This layer knows OCI semantics and nothing of HTTP; `wharf-server` translates.

pub mod browse;
mod cache;
pub mod error;
pub mod events;
mod fill;
pub mod fsck;
pub mod gc;
pub mod policy;
pub mod registry;
pub mod report;
pub mod trust;
pub mod upstream;

pub use cache::ServedManifest;
pub use error::{MissingChild, RegistryError, Result};
pub use events::{EventKind, EventOrigin, Webhook, WebhookStats};
pub use fsck::{FsckProblem, FsckReport, ProblemKind, fsck, fsck_registry};
pub use gc::{
    BlobCandidate, BlobSweep, DEFAULT_GRACE, GarbageCollector, GcReport, LinkCandidate, RepoGcReport,
};
pub use policy::{IndexPolicy, IndexRule, RepoPattern};
pub use registry::{MountOutcome, PushedManifest, Registry, RegistryConfig};
pub use report::{ChildReport, IndexReport, ReferrerReport, RepoStorageReport, StorageReport, StorageTotals};
pub use trust::TrustRule;
pub use upstream::{BoxFuture, DEFAULT_TAG_TTL, Upstream, UpstreamBlob, UpstreamManifest, UpstreamRule};
