//! Errors of the client. No variant ever carries a secret (password, token, auth header).

use std::fmt;

use wharf_oci::Digest;

/// Longest response body kept in an error (the rest is cut).
pub(crate) const MAX_ERROR_BODY: usize = 4096;

#[derive(thiserror::Error, Debug)]
pub enum ClientError {
    /// 404: the manifest, blob, repository or upload does not exist.
    #[error("{what} not found{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    NotFound {
        what: String,
        /// The registry's own error message, when it sent one (e.g. Wharf's "platform
        /// linux/s390x of index ... is not in this registry (sparse index)").
        message: Option<String>,
    },
    /// 401/403 after authentication was tried, or credentials missing where required.
    #[error("{registry}: access denied: {message}")]
    Unauthorized { registry: String, message: String },
    /// Any other error answer of the registry.
    #[error("registry {registry} answered HTTP {status}: {}", describe(errors, body))]
    Registry {
        status: u16,
        registry: String,
        /// The parsed `{"errors":[{code,message,detail}]}` body (empty if it had none).
        errors: Vec<RegistryErrorEntry>,
        /// The body as text, cut at 4 KiB.
        body: String,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Transport failure: connection refused or dropped, TLS, timeout.
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Bad input or a malformed answer.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The first registry error code (e.g. `MANIFEST_BLOB_UNKNOWN`), if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Registry { errors, .. } => errors.first().map(|e| e.code.as_str()),
            _ => None,
        }
    }

    /// HTTP status of a registry answer, when the error is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Registry { status, .. } => Some(*status),
            ClientError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::NotFound { .. })
    }
}

/// One entry of the distribution spec's error body.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegistryErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

impl fmt::Display for RegistryErrorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code.is_empty(), self.message.is_empty()) {
            (false, false) => write!(f, "{}: {}", self.code, self.message)?,
            (false, true) => f.write_str(&self.code)?,
            (true, _) => f.write_str(&self.message)?,
        }
        if !self.detail.is_null() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<RegistryErrorEntry>,
}

/// Parse `{"errors":[...]}`; anything else gives no entries.
pub(crate) fn parse_errors(body: &[u8]) -> Vec<RegistryErrorEntry> {
    serde_json::from_slice::<ErrorBody>(body).map(|b| b.errors).unwrap_or_default()
}

/// The body as text, cut to [`MAX_ERROR_BODY`] at a character boundary.
pub(crate) fn body_text(body: &[u8]) -> String {
    let cut = &body[..body.len().min(MAX_ERROR_BODY)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if body.len() > MAX_ERROR_BODY {
        s.push_str("...");
    }
    s
}

fn describe(errors: &[RegistryErrorEntry], body: &str) -> String {
    if !errors.is_empty() {
        return errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    }
    let body = body.trim();
    if body.is_empty() { "(empty body)".to_owned() } else { body.to_owned() }
}

/// A reqwest error as text, without anything secret (reqwest never prints headers; URLs
/// carry no credentials here because they are never put in URLs).
pub(crate) fn http_error(context: &str, e: &reqwest::Error) -> ClientError {
    use std::error::Error as _;
    let mut msg = format!("{context}: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    ClientError::Http(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_error_display() {
        let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#;
        let e = ClientError::Registry {
            status: 400,
            registry: "r:5000".into(),
            errors: parse_errors(body),
            body: body_text(body),
        };
        assert_eq!(e.code(), Some("MANIFEST_BLOB_UNKNOWN"));
        assert_eq!(
            e.to_string(),
            "registry r:5000 answered HTTP 400: MANIFEST_BLOB_UNKNOWN: blob unknown to registry (\"sha256:ab\")"
        );
        let e = ClientError::Registry {
            status: 502,
            registry: "r".into(),
            errors: parse_errors(b"<html>bad gateway</html>"),
            body: body_text(b"<html>bad gateway</html>"),
        };
        assert!(e.to_string().ends_with("502: <html>bad gateway</html>"));
        let nf = ClientError::NotFound { what: "manifest a:b".into(), message: Some("gone".into()) };
        assert_eq!(nf.to_string(), "manifest a:b not found: gone");
    }

    #[test]
    fn body_is_cut() {
        let long = vec![b'x'; MAX_ERROR_BODY * 2];
        assert_eq!(body_text(&long).len(), MAX_ERROR_BODY + 3);
    }
}
