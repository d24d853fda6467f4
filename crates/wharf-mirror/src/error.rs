//! Errors of the mirror. Messages say what failed, where, and what to do about it.

use wharf_client::ClientError;

#[derive(thiserror::Error, Debug)]
pub enum MirrorError {
    /// An image reference that cannot be parsed (`docker://…`, `oci:…`, `oci-archive:…`).
    #[error("{0}")]
    InvalidReference(String),
    /// The source image (or something it points at) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A platform asked for by name is not in the source index, or absent there.
    #[error("{0}")]
    PlatformMissing(String),
    /// The destination does not accept the sparse index this copy would produce.
    #[error("{0}")]
    SparseRefused(String),
    /// The source's signatures do not verify with the keys given (`--verify-key`).
    #[error("{0}")]
    Untrusted(String),
    /// A registry request failed; `context` says what was being done.
    #[error("{context}: {source}")]
    Client {
        context: String,
        #[source]
        source: ClientError,
    },
    /// A file system operation on a layout or archive failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Content that is not what it claims to be (bad JSON, digest or size mismatch, ...).
    #[error("{0}")]
    Invalid(String),
}

impl MirrorError {
    pub(crate) fn client(context: impl Into<String>) -> impl FnOnce(ClientError) -> MirrorError {
        let context = context.into();
        move |source| MirrorError::Client { context, source }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MirrorError {
        let context = context.into();
        move |source| MirrorError::Io { context, source }
    }
}
