//! The one table that maps registry errors to HTTP status and OCI error code, and the
//! spec's JSON error body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_metadata::MetadataError;
use wharf_oci::ErrorCode;
use wharf_registry::RegistryError;
use wharf_storage::StorageError;

/// What a 503 asks clients to wait before retrying.
const RETRY_AFTER_SECS: u32 = 2;

/// One entry of `{"errors":[…]}`.
#[derive(Debug, serde::Serialize)]
pub struct ErrorEntry {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// An error response: status plus one or more entries.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub errors: Vec<ErrorEntry>,
    /// Seconds for a `Retry-After` header (503 while a backing service is away).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            errors: vec![ErrorEntry {
                code: code.as_str(),
                message: message.into(),
                detail: serde_json::Value::Null,
            }],
            retry_after: None,
        }
    }

    pub fn unsupported(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported, message)
    }

    /// The spec's JSON body, `{"errors":[…]}`.
    pub fn body(&self) -> String {
        serde_json::json!({ "errors": self.errors }).to_string()
    }
}

/// The LDAP directory could not check a password (down, slower than its timeout, refusing
/// the search account): 503, so that clients retry instead of asking for another password.
impl From<wharf_auth::DirectoryError> for ApiError {
    fn from(e: wharf_auth::DirectoryError) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            format!("cannot check the password now: {e}; retry later"),
        );
        err.retry_after = Some(RETRY_AFTER_SECS);
        err
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        use RegistryError as E;
        let (status, code) = match &e {
            E::NameUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            E::BlobUnknown { .. } => (StatusCode::NOT_FOUND, ErrorCode::BlobUnknown),
            E::UploadUnknown(_) => (StatusCode::NOT_FOUND, ErrorCode::BlobUploadUnknown),
            E::UploadInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::BlobUploadInvalid),
            E::RangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::BlobUploadInvalid),
            E::ReadRangeInvalid(_) => (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid),
            E::DigestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            E::SizeInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::SizeInvalid),
            E::BlobTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::SizeInvalid),
            E::ManifestUnknown { .. } => (StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            E::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid),
            E::ManifestTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::ManifestInvalid),
            E::ManifestBlobUnknown { .. } => (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown),
            E::IndexChildrenMissing { .. } => (StatusCode::BAD_REQUEST, ErrorCode::ManifestBlobUnknown),
            E::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            E::Denied(_) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            E::Storage(s) if s.is_storage_full() => return disk_full(&e),
            E::Metadata(m) if m.is_storage_full() => return disk_full(&e),
            E::Storage(StorageError::Unavailable(_)) | E::Metadata(MetadataError::Unavailable(_)) => {
                // Nothing was changed; the client should retry once the service is back.
                tracing::warn!(error = %e, "backing service unavailable");
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Unavailable,
                    format!("{e}; nothing was changed, retry later"),
                );
                err.retry_after = Some(RETRY_AFTER_SECS);
                return err;
            }
            E::Storage(_) | E::Metadata(_) => {
                tracing::error!(error = %e, "internal error");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unsupported,
                    "internal storage error; the server log has the details",
                );
            }
        };
        let errors = match e {
            // One entry per missing child, each naming its platform: clients print these.
            E::IndexChildrenMissing { policy, missing } => missing
                .into_iter()
                .map(|m| {
                    let platform = m.platform.clone().unwrap_or_else(|| "(no platform)".into());
                    ErrorEntry {
                        code: code.as_str(),
                        message: format!(
                            "index child for platform {platform} ({}) is not in this repository, \
                             and its index policy ({policy}) requires it: push that manifest first, \
                             or ask the registry admin to allow sparse indexes here",
                            m.digest
                        ),
                        detail: serde_json::json!({
                            "digest": m.digest,
                            "platform": m.platform,
                            "mediaType": m.media_type,
                            "policy": policy,
                        }),
                    }
                })
                .collect(),
            E::ManifestBlobUnknown { ref digest, .. } => vec![ErrorEntry {
                code: code.as_str(),
                message: e.to_string(),
                detail: serde_json::json!({ "digest": digest }),
            }],
            other => vec![ErrorEntry {
                code: code.as_str(),
                message: other.to_string(),
                detail: serde_json::Value::Null,
            }],
        };
        ApiError { status, errors, retry_after: None }
    }
}

/// The disk under the data directory (or the database) is full: 507, with a message an
/// administrator can act on. What failed was undone (temporary files removed, the transaction
/// rolled back), so nothing partial is visible and the space it took is free again.
fn disk_full(e: &RegistryError) -> ApiError {
    tracing::error!(error = %e, "storage full: pushes fail until space is freed (wharf gc, a larger disk)");
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Unavailable,
        "the registry's storage is full (no space left on device): nothing of this request was kept; \
         retry once an administrator has freed space",
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, self.body()).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
