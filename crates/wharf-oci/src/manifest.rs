//! Manifests and indexes: the raw bytes stay the source of truth; this is a parsed view
//! used to validate a push and to learn what it references.

use std::collections::BTreeMap;

use crate::media_types;
use crate::{Digest, Platform};

/// Largest manifest accepted (DESIGN.md: 4 MiB, as distribution and most registries).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// The fields of an image manifest or an index that the registry acts on.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u32>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

// One value per pushed manifest, never stored in bulk: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema2): a config and layers.
    Image { config: Descriptor, layers: Vec<Descriptor> },
    /// An index (OCI image index or Docker manifest list): child manifests.
    Index { manifests: Vec<Descriptor> },
}

/// A parsed view of manifest bytes. Never serialised back: the bytes are kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub media_type: String,
    pub kind: ManifestKind,
    pub artifact_type: Option<String>,
    pub subject: Option<Descriptor>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes; the limit is {MAX_MANIFEST_BYTES} bytes")]
    TooLarge(usize),
    #[error(
        "Content-Type {0:?} is not a manifest media type this registry accepts \
         (use one of {types})",
        types = media_types::MANIFEST_TYPES.join(", ")
    )]
    UnsupportedMediaType(String),
    #[error("manifest mediaType {body:?} does not match the Content-Type {header:?} it was sent with")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schemaVersion must be 2, found {0:?}")]
    SchemaVersion(Option<u32>),
    #[error("{0}")]
    Invalid(String),
}

impl Manifest {
    /// Parse manifest bytes sent with `content_type` (the header, or the mediaType field
    /// when the header is absent).
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::SchemaVersion(raw.schema_version));
        }
        // Parameters such as "; charset=utf-8" are not part of the media type.
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
            .filter(|c| !c.is_empty());
        let media_type = match (&header, &raw.media_type) {
            (Some(h), Some(b)) if h != b => {
                return Err(ManifestError::MediaTypeMismatch { header: h.clone(), body: b.clone() });
            }
            (Some(h), _) => h.clone(),
            (None, Some(b)) => b.clone(),
            // OCI allows omitting mediaType; infer it from the shape.
            (None, None) if raw.manifests.is_some() => media_types::OCI_INDEX.to_owned(),
            (None, None) => media_types::OCI_MANIFEST.to_owned(),
        };
        let kind = if media_types::is_index(&media_type) {
            if raw.config.is_some() || raw.layers.is_some() {
                return Err(ManifestError::Invalid("an index must not have config or layers".into()));
            }
            let manifests = raw
                .manifests
                .ok_or_else(|| ManifestError::Invalid("an index must have a manifests array".into()))?;
            ManifestKind::Index { manifests }
        } else if media_types::is_image_manifest(&media_type) {
            if raw.manifests.is_some() {
                return Err(ManifestError::Invalid(
                    "an image manifest must not have a manifests array".into(),
                ));
            }
            let config = raw.config.ok_or_else(|| {
                ManifestError::Invalid("an image manifest must have a config descriptor".into())
            })?;
            let layers = raw.layers.unwrap_or_default();
            ManifestKind::Image { config, layers }
        } else {
            return Err(ManifestError::UnsupportedMediaType(media_type));
        };
        Ok(Manifest {
            media_type,
            kind,
            artifact_type: raw.artifact_type,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }

    pub fn is_index(&self) -> bool {
        matches!(self.kind, ManifestKind::Index { .. })
    }

    /// The children of an index (empty for an image manifest).
    pub fn children(&self) -> &[Descriptor] {
        match &self.kind {
            ManifestKind::Index { manifests } => manifests,
            ManifestKind::Image { .. } => &[],
        }
    }

    /// Config and layers of an image manifest (empty for an index).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match &self.kind {
            ManifestKind::Image { config, layers } => std::iter::once(config).chain(layers.iter()).collect(),
            ManifestKind::Index { .. } => Vec::new(),
        }
    }

    /// The artifact type a referrers listing reports: `artifactType`, else the config's
    /// media type (image-spec, "Guidelines for artifact usage").
    pub fn effective_artifact_type(&self) -> Option<String> {
        if let Some(a) = &self.artifact_type {
            return Some(a.clone());
        }
        match &self.kind {
            ManifestKind::Image { config, .. } => Some(config.media_type.clone()),
            ManifestKind::Index { .. } => None,
        }
    }
}

/// For docker buildx attestation manifests: the digest of the image they describe.
pub const DOCKER_REFERENCE_DIGEST: &str = "vnd.docker.reference.digest";
pub const DOCKER_REFERENCE_TYPE: &str = "vnd.docker.reference.type";

/// If these are the annotations of a buildx attestation manifest, the digest of the image it
/// describes.
pub fn attestation_subject(annotations: &BTreeMap<String, String>) -> Option<Digest> {
    if annotations.get(DOCKER_REFERENCE_TYPE).map(String::as_str) != Some("attestation-manifest") {
        return None;
    }
    annotations.get(DOCKER_REFERENCE_DIGEST)?.parse().ok()
}

impl Descriptor {
    /// If this index child is a buildx attestation, the digest of its subject child.
    pub fn attestation_subject(&self) -> Option<Digest> {
        attestation_subject(self.annotations.as_ref()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_index_and_keeps_platforms() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
            {{"mediaType":"{}","digest":"{D}","size":7,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{}","digest":"{D}","size":7,"platform":{{"os":"unknown","architecture":"unknown"}},
              "annotations":{{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"{D}"}}}}]}}"#,
            media_types::OCI_INDEX,
            media_types::OCI_MANIFEST,
            media_types::OCI_MANIFEST
        );
        let m = Manifest::parse(Some(media_types::OCI_INDEX), body.as_bytes()).unwrap();
        assert!(m.is_index());
        assert_eq!(m.children().len(), 2);
        assert_eq!(m.children()[0].platform.as_ref().unwrap().normalized().to_string(), "linux/arm64");
        assert_eq!(m.children()[1].attestation_subject().unwrap().to_string(), D);
    }

    #[test]
    fn image_manifest_blobs_and_artifact_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/x.cfg","digest":"{D}","size":0}},"layers":[{{"mediaType":"x","digest":"{D}","size":0}}]}}"#,
            media_types::OCI_MANIFEST
        );
        let m = Manifest::parse(None, body.as_bytes()).unwrap();
        assert_eq!(m.blobs().len(), 2);
        assert_eq!(m.effective_artifact_type().as_deref(), Some("application/x.cfg"));
    }

    #[test]
    fn rejects_bad_manifests() {
        let ok = format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#, media_types::OCI_INDEX);
        assert!(matches!(
            Manifest::parse(Some(media_types::OCI_MANIFEST), ok.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            Manifest::parse(Some("text/plain"), br#"{"schemaVersion":2}"#),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
        assert!(matches!(Manifest::parse(None, b"{"), Err(ManifestError::Json(_))));
        assert!(matches!(
            Manifest::parse(None, br#"{"schemaVersion":1}"#),
            Err(ManifestError::SchemaVersion(Some(1)))
        ));
        let bad_digest =
            r#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:zz","size":1}]}"#;
        assert!(matches!(Manifest::parse(None, bad_digest.as_bytes()), Err(ManifestError::Json(_))));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(Manifest::parse(None, &big), Err(ManifestError::TooLarge(_))));
    }
}
