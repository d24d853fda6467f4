//! On-demand fill: a repository may name an upstream. A manifest or blob asked for by digest
//! that is not here is then fetched from it, verified against its digest, stored, and
//! served, so a sparse mirror completes itself where a network path exists.
//!
//! The transport is not this crate's business: `Upstream` is implemented over HTTP by the
//! binary (see `wharf/src/upstream.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wharf_oci::{Digest, RepoName};
use wharf_storage::BodyStream;

use crate::policy::RepoPattern;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A manifest from an upstream: media type and exact bytes.
pub type UpstreamManifest = (String, Vec<u8>);

/// Where absent content of some repositories comes from.
pub trait Upstream: Send + Sync {
    /// For log lines and error messages, e.g. `registry.example.com/vendor`.
    fn describe(&self) -> String;

    /// The manifest `digest` of the local repository `repo`, as (media type, exact bytes);
    /// `Ok(None)` when the upstream does not have it.
    fn manifest<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<UpstreamManifest>, String>>;

    /// The blob `digest` of the local repository `repo` as a stream (the store verifies the
    /// digest while writing); `Ok(None)` when the upstream does not have it.
    fn blob<'a>(
        &'a self,
        repo: &'a RepoName,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<BodyStream>, String>>;
}

/// Repositories matching `pattern` fill from `upstream`.
#[derive(Clone)]
pub struct UpstreamRule {
    pub pattern: RepoPattern,
    pub upstream: Arc<dyn Upstream>,
}

impl std::fmt::Debug for UpstreamRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRule")
            .field("pattern", &self.pattern)
            .field("upstream", &self.upstream.describe())
            .finish()
    }
}
