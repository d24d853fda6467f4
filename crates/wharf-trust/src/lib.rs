//! Verifying cosign signatures of manifests (DESIGN.md, "Trust").
//!
//! A cosign signature of a manifest `D` is a manifest (found through the tag
//! `sha256-<hex of D>.sig`, or as a referrer of `D` with artifact type [`COSIGN_SIG_ARTIFACT`])
//! whose layer is the *simple-signing payload*, a JSON document naming `D` in
//! `critical.image.docker-manifest-digest`, and whose layer annotation
//! [`SIGNATURE_ANNOTATION`] holds the base64 signature over that payload.
//!
//! This crate does no I/O: the caller finds the signature manifests and fetches the payload
//! blobs (the mirror over any transport, the registry from its own storage), then hands the
//! bytes here. Every failure is an error naming what is wrong; nothing malformed passes.

mod key;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;
use wharf_oci::{Descriptor, Digest, Manifest};

pub use key::{KeyAlgorithm, PublicKey};

/// The layer annotation holding cosign's base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of the simple-signing payload layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const COSIGN_SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// Why a signature (or a key) is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("malformed public key: {0}")]
    MalformedKey(String),
    #[error("unsupported public key: {0} (ECDSA P-256, Ed25519 and RSA keys are supported)")]
    UnsupportedKey(String),
    #[error("signature manifest is malformed: {0}")]
    MalformedSignatureManifest(String),
    #[error("signature manifest has no simple-signing layer with a {SIGNATURE_ANNOTATION} annotation")]
    NoSignatureLayer,
    #[error("signature is not base64: {0}")]
    SignatureNotBase64(String),
    #[error("payload {actual} does not match the signature layer's digest {expected}")]
    PayloadDigest { expected: Digest, actual: Digest },
    #[error("signature does not verify with key {fingerprint}")]
    BadSignature { fingerprint: String },
    #[error("signature does not verify with any of the keys {}", fingerprints.join(", "))]
    NoKeyVerifies { fingerprints: Vec<String> },
    #[error("no keys to verify with")]
    NoKeys,
    #[error("signed payload is not JSON: {0}")]
    PayloadNotJson(String),
    #[error("signed payload has no critical.image.docker-manifest-digest")]
    PayloadWithoutDigest,
    #[error("signature is for {signed}, not for {expected}")]
    WrongSubject { expected: String, signed: String },
}

/// One signature inside a signature manifest: where its payload is and the base64 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob (the caller fetches it; [`verify_layer`] checks it against this).
    pub payload: Descriptor,
    /// The annotation's value, as found (decoded by [`verify_layer`]).
    pub signature: String,
}

/// The signature layers of a cosign signature manifest. A manifest without any is an error
/// ([`TrustError::NoSignatureLayer`]), so it can never count as a pass.
pub fn signature_layers(manifest: &[u8]) -> Result<Vec<SignatureLayer>, TrustError> {
    let parsed =
        Manifest::parse(None, manifest).map_err(|e| TrustError::MalformedSignatureManifest(e.to_string()))?;
    let wharf_oci::ManifestKind::Image { layers, .. } = &parsed.kind else {
        return Err(TrustError::MalformedSignatureManifest("it is an index, not an image manifest".into()));
    };
    let layers: Vec<SignatureLayer> = layers
        .iter()
        .filter_map(|d| {
            let sig = d.annotations.as_ref()?.get(SIGNATURE_ANNOTATION)?;
            Some(SignatureLayer { payload: d.clone(), signature: sig.clone() })
        })
        .collect();
    if layers.is_empty() {
        return Err(TrustError::NoSignatureLayer);
    }
    Ok(layers)
}

/// Verify one signature layer: `payload` is the layer's blob, the signature verifies over it
/// with one of `keys`, and the payload signs `subject`. Returns the key that verified.
pub fn verify_layer<'k>(
    keys: &'k [PublicKey],
    layer: &SignatureLayer,
    payload: &[u8],
    subject: &Digest,
) -> Result<&'k PublicKey, TrustError> {
    let actual = Digest::compute(layer.payload.digest.algorithm(), payload);
    if actual != layer.payload.digest {
        return Err(TrustError::PayloadDigest { expected: layer.payload.digest.clone(), actual });
    }
    let key = verify_payload(keys, payload, &layer.signature)?;
    check_payload_subject(payload, subject)?;
    Ok(key)
}

/// Verify a base64 signature over `payload` with any of `keys`.
pub fn verify_payload<'k>(
    keys: &'k [PublicKey],
    payload: &[u8],
    signature_b64: &str,
) -> Result<&'k PublicKey, TrustError> {
    if keys.is_empty() {
        return Err(TrustError::NoKeys);
    }
    let raw =
        BASE64.decode(signature_b64.trim()).map_err(|e| TrustError::SignatureNotBase64(e.to_string()))?;
    if let Some(k) = keys.iter().find(|k| k.verify(payload, &raw).is_ok()) {
        return Ok(k);
    }
    Err(match keys {
        [one] => TrustError::BadSignature { fingerprint: one.fingerprint().to_owned() },
        _ => TrustError::NoKeyVerifies {
            fingerprints: keys.iter().map(|k| k.fingerprint().to_owned()).collect(),
        },
    })
}

/// The simple-signing payload must be JSON naming `subject` as the signed manifest digest.
pub fn check_payload_subject(payload: &[u8], subject: &Digest) -> Result<(), TrustError> {
    let v: Value = serde_json::from_slice(payload).map_err(|e| TrustError::PayloadNotJson(e.to_string()))?;
    let signed = v
        .get("critical")
        .and_then(|c| c.get("image"))
        .and_then(|i| i.get("docker-manifest-digest"))
        .and_then(Value::as_str)
        .ok_or(TrustError::PayloadWithoutDigest)?;
    if signed != subject.to_string() {
        return Err(TrustError::WrongSubject { expected: subject.to_string(), signed: signed.to_owned() });
    }
    Ok(())
}

/// cosign's signature tag for `subject`: `sha256-<hex>.sig`.
pub fn signature_tag(subject: &Digest) -> String {
    subject.cosign_tag("sig")
}

/// Is this referrer (as the referrers API lists it) a cosign signature?
pub fn is_signature_referrer(desc: &Descriptor) -> bool {
    desc.artifact_type.as_deref() == Some(COSIGN_SIG_ARTIFACT)
}

/// What the signatures found for one manifest add up to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Verdict {
    /// A signature verified (with the key of this fingerprint).
    Valid { fingerprint: String, signature: Digest },
    /// Signatures were found but none verified; one reason per signature.
    Invalid { reasons: Vec<String> },
    /// No signature was found.
    Missing,
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid { .. })
    }

    /// One line: `valid (key sha256:…)`, `invalid: …`, `missing`.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Valid { fingerprint, .. } => format!("valid (key {fingerprint})"),
            Verdict::Invalid { reasons } => format!("invalid: {}", reasons.join("; ")),
            Verdict::Missing => "missing: no cosign signature found".to_owned(),
        }
    }
}

/// Collects the outcome of each signature of one subject into a [`Verdict`]: as with
/// `cosign verify`, one signature that verifies is enough.
#[derive(Debug, Default)]
pub struct Assessment {
    valid: Option<(String, Digest)>,
    reasons: Vec<String>,
}

impl Assessment {
    pub fn new() -> Assessment {
        Assessment::default()
    }

    /// The outcome of the signature manifest `signature`.
    pub fn record(&mut self, signature: &Digest, outcome: Result<&PublicKey, TrustError>) {
        match outcome {
            Ok(k) => {
                if self.valid.is_none() {
                    self.valid = Some((k.fingerprint().to_owned(), signature.clone()));
                }
            }
            Err(e) => self.reasons.push(format!("signature {signature}: {e}")),
        }
    }

    pub fn verdict(self) -> Verdict {
        match self.valid {
            Some((fingerprint, signature)) => Verdict::Valid { fingerprint, signature },
            None if self.reasons.is_empty() => Verdict::Missing,
            None => Verdict::Invalid { reasons: self.reasons },
        }
    }
}

#[cfg(test)]
mod tests;
