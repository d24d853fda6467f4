//! On-demand fill: a repository may name an upstream. A manifest or blob asked for by digest
//! that is not here is then fetched from it, verified against its digest, stored, and
//! served, so a sparse mirror completes itself where a network path exists. With
//! `proxy_tags`, tags are looked up there too (pull-through), at most once per `tag_ttl`.
//!
//! The transport is not this crate's business: `Upstream` is implemented over HTTP by the
//! binary (see `wharf/src/upstream.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use wharf_oci::{Digest, Reference, RepoName};
use wharf_storage::BodyStream;

use crate::policy::RepoPattern;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A manifest from an upstream: media type and exact bytes.
pub type UpstreamManifest = (String, Vec<u8>);

/// A blob from an upstream, as it arrives.
pub struct UpstreamBlob {
    /// The length the upstream announced (`Content-Length`), if any: with it, the blob is
    /// streamed to clients while it is stored; without, it is stored first.
    pub size: Option<u64>,
    pub body: BodyStream,
}

/// Where absent content of some repositories comes from.
pub trait Upstream: Send + Sync {
    /// For log lines and error messages, e.g. `registry.example.com/vendor`.
    fn describe(&self) -> String;

    /// The manifest `reference` (a digest, or a tag for pull-through) of the local repository
    /// `repo`, as (media type, exact bytes); `Ok(None)` when the upstream does not have it,
    /// `Err` when it could not say (unreachable, 5xx, refused).
    fn manifest<'a>(
        &'a self,
        repo: &'a RepoName,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<Option<UpstreamManifest>, String>>;

    /// The blob `digest` of the local repository `repo` as a stream (the registry verifies the
    /// digest while storing it); `Ok(None)` when the upstream does not have it.
    fn blob<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<UpstreamBlob>, String>>;
}

/// How long a tag looked up upstream is served without asking again, unless configured.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

/// Repositories matching `pattern` fill from `upstream`.
#[derive(Clone)]
pub struct UpstreamRule {
    pub pattern: RepoPattern,
    pub upstream: Arc<dyn Upstream>,
    /// Pull-through: a tag absent here, or last checked more than `tag_ttl` ago, is looked up
    /// upstream; what the upstream has is stored as received (an index stays sparse).
    pub proxy_tags: bool,
    pub tag_ttl: Duration,
}

impl UpstreamRule {
    /// Fill by digest only (no pull-through of tags).
    pub fn new(pattern: RepoPattern, upstream: Arc<dyn Upstream>) -> UpstreamRule {
        UpstreamRule { pattern, upstream, proxy_tags: false, tag_ttl: DEFAULT_TAG_TTL }
    }
}

impl std::fmt::Debug for UpstreamRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRule")
            .field("pattern", &self.pattern)
            .field("upstream", &self.upstream.describe())
            .field("proxy_tags", &self.proxy_tags)
            .field("tag_ttl", &self.tag_ttl)
            .finish()
    }
}
