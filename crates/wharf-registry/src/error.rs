//! What can go wrong in a registry operation, in terms a client can act on. The server
//! maps each variant to an OCI error code and HTTP status in one table.

use wharf_metadata::MetadataError;
use wharf_oci::{Digest, RepoName};
use wharf_storage::StorageError;

/// One child an index push needs but the repository does not have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MissingChild {
    pub digest: Digest,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub platform: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("repository {0} is not known to this registry")]
    NameUnknown(RepoName),
    #[error("blob {digest} is not in repository {repo}")]
    BlobUnknown { repo: RepoName, digest: Digest },
    #[error("upload {0} is not known: it finished, was cancelled or expired; start a new one")]
    UploadUnknown(String),
    #[error("{0}")]
    UploadInvalid(String),
    #[error("{0}")]
    RangeInvalid(String),
    /// A `Range` on a blob read that the blob cannot satisfy.
    #[error("{0}")]
    ReadRangeInvalid(String),
    #[error("{0}")]
    DigestInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    /// A pushed blob crossed `max_blob_bytes`.
    #[error("the blob is larger than this registry accepts: at most {0} bytes (limits.max_blob_bytes)")]
    BlobTooLarge(u64),
    #[error("{message}")]
    ManifestUnknown { message: String },
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest is {0} bytes; this registry accepts manifests up to {max} bytes", max = wharf_oci::MAX_MANIFEST_BYTES)]
    ManifestTooLarge(usize),
    /// A manifest references blobs the repository does not hold.
    #[error("manifest references blob {digest}, which is not in repository {repo}; push it first")]
    ManifestBlobUnknown { repo: RepoName, digest: Digest },
    /// An index lists children its repository's policy requires but that are absent.
    #[error("index lists {} child manifest(s) that are required here but not present", .missing.len())]
    IndexChildrenMissing { policy: String, missing: Vec<MissingChild> },
    #[error("{0}")]
    Unsupported(String),
    /// Refused by policy (`[[trust]]`: the manifest's signature does not verify).
    #[error("{0}")]
    Denied(String),
    #[error(transparent)]
    Storage(StorageError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::UploadUnknown(id) => RegistryError::UploadUnknown(id),
            StorageError::OffsetMismatch { expected, actual } => RegistryError::RangeInvalid(format!(
                "chunk starts at byte {expected}, but the upload holds {actual} bytes: \
                 send the chunk that starts at {actual}"
            )),
            StorageError::DigestMismatch { expected, actual } => RegistryError::DigestInvalid(format!(
                "uploaded content hashes to {actual}, not to {expected}: nothing was stored"
            )),
            StorageError::SizeMismatch { expected, actual } => RegistryError::SizeInvalid(format!(
                "upload holds {actual} bytes, but {expected} were declared"
            )),
            StorageError::Body(msg) => RegistryError::UploadInvalid(format!(
                "the upload body broke off ({msg}); resume from the offset in the Range header"
            )),
            other => RegistryError::Storage(other),
        }
    }
}

pub type Result<T> = std::result::Result<T, RegistryError>;
