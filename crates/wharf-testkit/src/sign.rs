//! Signatures and other referrers, made the way real tools make them:
//!
//! - cosign-style signatures: a manifest tagged `sha256-<hex>.sig` whose layer is the
//!   simple-signing payload, with the base64 DER ECDSA P-256 (SHA-256) signature in the
//!   `dev.cosignproject.cosign/signature` annotation;
//! - an SPDX SBOM artifact manifest whose `subject` is an image (OCI 1.1 referrers);
//! - the OCI referrers tag-schema fallback index (`sha256-<hex>`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::digest_hex;
use crate::image::{Blob, Descriptor, Manifest, media_type};

/// The annotation holding a cosign signature.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The manifests and blobs of one referrer, ready to push ([`crate::RegistryClient::push_artifact`]).
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The tag it is pushed under (`sha256-<hex>.sig`, `sha256-<hex>`), or none: by digest.
    pub tag: Option<String>,
    pub manifest: Manifest,
    /// Config first, then layers.
    pub blobs: Vec<Blob>,
}

impl Artifact {
    /// The first layer (the simple-signing payload of a signature, the document of an SBOM).
    pub fn payload(&self) -> &Blob {
        &self.blobs[1]
    }
}

/// An ECDSA P-256 key derived from a seed: the same seed always gives the same key.
#[derive(Clone, Debug)]
pub struct CosignKey {
    signing: SigningKey,
}

impl CosignKey {
    pub fn from_seed(seed: u64) -> Self {
        let mut counter = 0u32;
        loop {
            let bytes = Sha256::digest(format!("wharf-testkit key {seed} {counter}"));
            if let Ok(signing) = SigningKey::from_bytes(&bytes) {
                return CosignKey { signing };
            }
            counter += 1;
        }
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        *self.signing.verifying_key()
    }

    /// The public key as `cosign generate-key-pair` writes `cosign.pub` (PKIX PEM).
    pub fn public_key_pem(&self) -> String {
        use p256::pkcs8::EncodePublicKey as _;
        self.verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("a P-256 public key encodes")
    }

    /// base64 of the DER-encoded signature over `payload` (as cosign writes it).
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: Signature = self.signing.sign(payload);
        BASE64.encode(sig.to_der().as_bytes())
    }
}

/// cosign's signature tag for a digest: `sha256-<hex>.sig`.
pub fn cosign_signature_tag(subject_digest: &str) -> String {
    format!("sha256-{}.sig", digest_hex(subject_digest))
}

/// The OCI referrers tag-schema tag for a digest: `sha256-<hex>`.
pub fn referrers_tag(subject_digest: &str) -> String {
    format!("sha256-{}", digest_hex(subject_digest))
}

/// The simple-signing payload cosign signs, byte for byte as cosign writes it.
pub fn simple_signing_payload(docker_reference: &str, subject_digest: &str) -> Vec<u8> {
    format!(
        concat!(
            r#"{{"critical":{{"identity":{{"docker-reference":"{}"}},"#,
            r#""image":{{"docker-manifest-digest":"{}"}},"#,
            r#""type":"cosign container image signature"}},"optional":null}}"#
        ),
        docker_reference, subject_digest
    )
    .into_bytes()
}

/// A cosign-style signature of `subject_digest` (an index or a platform manifest), tagged
/// `sha256-<hex>.sig`. `docker_reference` is the repository, e.g. `127.0.0.1:5000/team/app`.
pub fn cosign_style_signature(key: &CosignKey, docker_reference: &str, subject_digest: &str) -> Artifact {
    let payload =
        Blob::new(media_type::COSIGN_SIMPLESIGNING, simple_signing_payload(docker_reference, subject_digest));
    let signature = key.sign(&payload.bytes);
    let config = Blob::new(
        media_type::OCI_CONFIG,
        serde_json::to_vec(&json!({
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"diff_ids": [payload.digest], "type": "layers"},
        }))
        .expect("serialise config"),
    );
    let mut layer = payload.descriptor().to_json();
    layer["annotations"] = json!({ COSIGN_SIGNATURE_ANNOTATION: signature });
    let manifest = Manifest::from_json(
        media_type::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": config.descriptor().to_json(),
            "layers": [layer],
        }),
    );
    Artifact { tag: Some(cosign_signature_tag(subject_digest)), manifest, blobs: vec![config, payload] }
}

/// The artifact type of a cosign signature stored as an OCI 1.1 referrer.
pub const COSIGN_SIG_ARTIFACT: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";

/// A cosign signature of `subject` in the OCI 1.1 referrers form (as `cosign sign` with
/// `COSIGN_EXPERIMENTAL=1 --registry-referrers-mode=oci-1-1` writes it): no tag, an
/// `artifactType`, the empty config and a `subject`. `payload` overrides the simple-signing
/// payload that is stored (the signature is always over the genuine one): a tampered payload.
pub fn cosign_referrer_signature(
    key: &CosignKey,
    docker_reference: &str,
    subject: &Descriptor,
    stored_payload: Option<Vec<u8>>,
) -> Artifact {
    let genuine = simple_signing_payload(docker_reference, &subject.digest);
    let signature = key.sign(&genuine);
    let payload = Blob::new(media_type::COSIGN_SIMPLESIGNING, stored_payload.unwrap_or(genuine));
    let config = empty_config();
    let mut layer = payload.descriptor().to_json();
    layer["annotations"] = json!({ COSIGN_SIGNATURE_ANNOTATION: signature });
    let manifest = Manifest::from_json(
        media_type::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": COSIGN_SIG_ARTIFACT,
            "config": config.descriptor().to_json(),
            "layers": [layer],
            "subject": subject.to_json(),
        }),
    );
    Artifact { tag: None, manifest, blobs: vec![config, payload] }
}

/// Why a signature does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature manifest is malformed: {0}")]
    Malformed(String),
    #[error("payload digest {actual} is not the layer's {expected}")]
    PayloadDigest { expected: String, actual: String },
    #[error("the ECDSA signature does not verify")]
    BadSignature,
    #[error("payload signs {actual}, expected {expected}")]
    WrongSubject { expected: String, actual: String },
}

/// Verifies a base64 DER ECDSA P-256 signature over `payload`.
pub fn verify_payload_signature(
    key: &VerifyingKey,
    payload: &[u8],
    signature_b64: &str,
) -> Result<(), SignatureError> {
    let der = BASE64
        .decode(signature_b64)
        .map_err(|e| SignatureError::Malformed(format!("signature is not base64: {e}")))?;
    let sig = Signature::from_der(&der)
        .map_err(|e| SignatureError::Malformed(format!("signature is not DER: {e}")))?;
    key.verify(payload, &sig).map_err(|_| SignatureError::BadSignature)
}

/// Verifies a cosign-style signature manifest as cosign would: the payload is the layer's blob,
/// the annotation's signature verifies over it with `key`, and the payload signs
/// `expected_subject`.
pub fn verify_cosign_signature(
    key: &VerifyingKey,
    manifest: &[u8],
    payload: &[u8],
    expected_subject: &str,
) -> Result<(), SignatureError> {
    let manifest: Value =
        serde_json::from_slice(manifest).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let layer = manifest["layers"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["mediaType"] == media_type::COSIGN_SIMPLESIGNING))
        .ok_or_else(|| SignatureError::Malformed("no simple-signing layer".into()))?;
    let expected = layer["digest"].as_str().unwrap_or_default().to_owned();
    let actual = crate::sha256_digest(payload);
    if expected != actual {
        return Err(SignatureError::PayloadDigest { expected, actual });
    }
    let signature = layer["annotations"][COSIGN_SIGNATURE_ANNOTATION]
        .as_str()
        .ok_or_else(|| SignatureError::Malformed("no signature annotation".into()))?;
    verify_payload_signature(key, payload, signature)?;
    let payload: Value =
        serde_json::from_slice(payload).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let signed = payload["critical"]["image"]["docker-manifest-digest"].as_str().unwrap_or_default();
    if signed != expected_subject {
        return Err(SignatureError::WrongSubject {
            expected: expected_subject.to_owned(),
            actual: signed.to_owned(),
        });
    }
    Ok(())
}

/// The empty config blob `{}` of OCI 1.1 artifacts.
pub fn empty_config() -> Blob {
    Blob::new(media_type::OCI_EMPTY, b"{}".to_vec())
}

/// An SPDX SBOM artifact (`artifactType: application/spdx+json`, empty config) whose `subject`
/// is `subject` (typically [`crate::TestImage::index_descriptor`]). No tag: push it by digest,
/// and, for a registry without the referrers API, also push [`referrers_tag_index`].
pub fn sbom_artifact(subject: &Descriptor, seed: u64) -> Artifact {
    let doc = json!({
        "SPDXID": "SPDXRef-DOCUMENT",
        "creationInfo": {"created": "2024-01-01T00:00:00Z", "creators": ["Tool: wharf-testkit"]},
        "dataLicense": "CC0-1.0",
        "documentNamespace": format!("https://wharf.invalid/spdx/{}/{seed}", digest_hex(&subject.digest)),
        "name": format!("wharf-test sbom {seed}"),
        "packages": [],
        "spdxVersion": "SPDX-2.3",
    });
    let doc = Blob::new(media_type::SPDX_JSON, serde_json::to_vec(&doc).expect("serialise SBOM"));
    let config = empty_config();
    let manifest = Manifest::from_json(
        media_type::OCI_MANIFEST,
        &json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "artifactType": media_type::SPDX_JSON,
            "config": config.descriptor().to_json(),
            "layers": [doc.descriptor().to_json()],
            "subject": subject.to_json(),
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        }),
    );
    Artifact { tag: None, manifest, blobs: vec![config, doc] }
}

/// The OCI referrers tag-schema index for `subject_digest`: an image index tagged
/// `sha256-<hex>` listing `referrers` (with their `artifactType`, if any).
pub fn referrers_tag_index(subject_digest: &str, referrers: &[&Manifest]) -> Artifact {
    let entries: Vec<Value> = referrers
        .iter()
        .map(|m| {
            let mut d = m.descriptor().to_json();
            let parsed = m.json();
            if let Some(t) = parsed.get("artifactType") {
                d["artifactType"] = t.clone();
            }
            if let Some(a) = parsed.get("annotations") {
                d["annotations"] = a.clone();
            }
            d
        })
        .collect();
    let manifest = Manifest::from_json(
        media_type::OCI_INDEX,
        &json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": entries}),
    );
    Artifact { tag: Some(referrers_tag(subject_digest)), manifest, blobs: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestImage;

    #[test]
    fn signature_verifies_and_tampering_is_caught() {
        let img = TestImage::builder().seed(9).build();
        let key = CosignKey::from_seed(1);
        let sig = cosign_style_signature(&key, "127.0.0.1:5000/team/app", &img.index.digest);
        assert_eq!(
            sig.tag.as_deref(),
            Some(format!("sha256-{}.sig", digest_hex(&img.index.digest)).as_str())
        );
        let payload = &sig.payload().bytes;
        let vk = key.verifying_key();
        verify_cosign_signature(&vk, &sig.manifest.bytes, payload, &img.index.digest).unwrap();

        // The payload is exactly cosign's simple-signing JSON.
        let v: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["critical"]["type"], "cosign container image signature");
        assert_eq!(v["optional"], Value::Null);

        // Tampered payload: digest check and signature check both refuse it.
        let tampered = String::from_utf8(payload.clone())
            .unwrap()
            .replace(&img.index.digest, &img.children[0].manifest.digest)
            .into_bytes();
        assert!(matches!(
            verify_cosign_signature(&vk, &sig.manifest.bytes, &tampered, &img.index.digest),
            Err(SignatureError::PayloadDigest { .. })
        ));
        let sig_b64 = sig.manifest.json()["layers"][0]["annotations"][COSIGN_SIGNATURE_ANNOTATION]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(verify_payload_signature(&vk, &tampered, &sig_b64), Err(SignatureError::BadSignature));
        // Another key does not verify it; another subject is refused.
        let other = CosignKey::from_seed(2).verifying_key();
        assert_eq!(verify_payload_signature(&other, payload, &sig_b64), Err(SignatureError::BadSignature));
        assert!(matches!(
            verify_cosign_signature(&vk, &sig.manifest.bytes, payload, &img.children[0].manifest.digest),
            Err(SignatureError::WrongSubject { .. })
        ));
    }

    #[test]
    fn sbom_has_subject_and_artifact_type() {
        let img = TestImage::builder().seed(9).build();
        let sbom = sbom_artifact(&img.index_descriptor(), 1);
        let m = sbom.manifest.json();
        assert_eq!(m["artifactType"], media_type::SPDX_JSON);
        assert_eq!(m["subject"]["digest"], img.index.digest.as_str());
        assert_eq!(m["config"]["mediaType"], media_type::OCI_EMPTY);
        assert_eq!(
            sbom.blobs[0].digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let fallback = referrers_tag_index(&img.index.digest, &[&sbom.manifest]);
        assert_eq!(fallback.manifest.json()["manifests"][0]["artifactType"], media_type::SPDX_JSON);
        assert_eq!(fallback.tag.unwrap(), format!("sha256-{}", digest_hex(&img.index.digest)));
    }
}
