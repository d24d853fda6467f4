//! Keys and signatures made by `openssl` (another implementation than the one verifying),
//! in the formats cosign writes.

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::json;

use super::*;

fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A key pair made by openssl: (public key, a function signing bytes with the private key).
struct OpensslKey {
    dir: tempfile::TempDir,
    kind: &'static str,
    public: PublicKey,
}

impl OpensslKey {
    fn new(kind: &'static str) -> OpensslKey {
        let dir = tempfile::tempdir().unwrap();
        let gen_args: &[&str] = match kind {
            "ec" => {
                &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "key.pem"]
            }
            "ed25519" => &["genpkey", "-algorithm", "ED25519", "-out", "key.pem"],
            "rsa" => &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "key.pem"],
            _ => unreachable!(),
        };
        openssl(dir.path(), gen_args);
        let pem = openssl(dir.path(), &["pkey", "-in", "key.pem", "-pubout"]);
        let public = PublicKey::from_pem(std::str::from_utf8(&pem).unwrap()).unwrap();
        OpensslKey { dir, kind, public }
    }

    /// base64 signature over `payload`, as cosign would make it with this key.
    fn sign(&self, payload: &[u8]) -> String {
        std::fs::write(self.dir.path().join("payload"), payload).unwrap();
        let raw = match self.kind {
            "ed25519" => openssl(
                self.dir.path(),
                &["pkeyutl", "-sign", "-rawin", "-inkey", "key.pem", "-in", "payload"],
            ),
            _ => openssl(self.dir.path(), &["dgst", "-sha256", "-sign", "key.pem", "payload"]),
        };
        BASE64.encode(raw)
    }
}

fn digest(s: &str) -> Digest {
    Digest::sha256_of(s.as_bytes())
}

fn payload_for(subject: &Digest) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"r.example/app"}},"image":{{"docker-manifest-digest":"{subject}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

fn sig_manifest(payload: &[u8], signature: &str) -> Vec<u8> {
    let config = b"{}";
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::sha256_of(config).to_string(), "size": 2},
        "layers": [{
            "mediaType": SIMPLE_SIGNING_MEDIA_TYPE,
            "digest": Digest::sha256_of(payload).to_string(),
            "size": payload.len(),
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }],
    }))
    .unwrap()
}

fn verify(
    keys: &[PublicKey],
    manifest: &[u8],
    payload: &[u8],
    subject: &Digest,
) -> Result<String, TrustError> {
    let layers = signature_layers(manifest)?;
    verify_layer(keys, &layers[0], payload, subject).map(|k| k.fingerprint().to_owned())
}

#[test]
fn every_key_type_verifies_and_refuses_others() {
    let subject = digest("index");
    let keys: Vec<OpensslKey> = ["ec", "ed25519", "rsa"].into_iter().map(OpensslKey::new).collect();
    for k in &keys {
        let payload = payload_for(&subject);
        let manifest = sig_manifest(&payload, &k.sign(&payload));
        let fp = verify(std::slice::from_ref(&k.public), &manifest, &payload, &subject).unwrap();
        assert_eq!(fp, k.public.fingerprint(), "{}", k.kind);
        // Any of several keys may verify; the one that did is reported.
        let all: Vec<PublicKey> = keys.iter().map(|k| k.public.clone()).collect();
        assert_eq!(verify(&all, &manifest, &payload, &subject).unwrap(), k.public.fingerprint());
        // Every other key refuses it.
        for other in keys.iter().filter(|o| o.kind != k.kind) {
            assert_eq!(
                verify(std::slice::from_ref(&other.public), &manifest, &payload, &subject),
                Err(TrustError::BadSignature { fingerprint: other.public.fingerprint().to_owned() }),
                "{} signature, {} key",
                k.kind,
                other.kind
            );
        }
    }
    assert_eq!(keys[0].public.algorithm(), KeyAlgorithm::EcdsaP256);
    assert_eq!(keys[1].public.algorithm(), KeyAlgorithm::Ed25519);
    assert_eq!(keys[2].public.algorithm(), KeyAlgorithm::Rsa);
}

#[test]
fn bad_signatures_and_payloads_are_errors() {
    let k = OpensslKey::new("ec");
    let keys = std::slice::from_ref(&k.public);
    let subject = digest("index");
    let good = payload_for(&subject);
    let good_sig = k.sign(&good);

    // A tampered payload: the layer digest no longer matches.
    let tampered = String::from_utf8(good.clone()).unwrap().replace("r.example", "x.example").into_bytes();
    let m = sig_manifest(&good, &good_sig);
    assert!(matches!(verify(keys, &m, &tampered, &subject), Err(TrustError::PayloadDigest { .. })));
    // ... and with the layer digest updated too, the signature refuses it.
    let m = sig_manifest(&tampered, &good_sig);
    assert!(matches!(verify(keys, &m, &tampered, &subject), Err(TrustError::BadSignature { .. })));

    // Signature not base64.
    let m = sig_manifest(&good, "not base64 at all!");
    assert!(matches!(verify(keys, &m, &good, &subject), Err(TrustError::SignatureNotBase64(_))));
    // base64 but not a signature.
    let m = sig_manifest(&good, "AAAA");
    assert!(matches!(verify(keys, &m, &good, &subject), Err(TrustError::BadSignature { .. })));

    // Validly signed, but the payload is not JSON.
    let junk = b"just some bytes".to_vec();
    let m = sig_manifest(&junk, &k.sign(&junk));
    assert!(matches!(verify(keys, &m, &junk, &subject), Err(TrustError::PayloadNotJson(_))));

    // Validly signed JSON without the digest.
    let bare = br#"{"critical":{"image":{}}}"#.to_vec();
    let m = sig_manifest(&bare, &k.sign(&bare));
    assert_eq!(verify(keys, &m, &bare, &subject), Err(TrustError::PayloadWithoutDigest));

    // Validly signed, for another manifest.
    let other = digest("child");
    let m = sig_manifest(&good, &good_sig);
    assert_eq!(
        verify(keys, &m, &good, &other),
        Err(TrustError::WrongSubject { expected: other.to_string(), signed: subject.to_string() })
    );

    // No keys never passes.
    assert_eq!(verify(&[], &m, &good, &subject), Err(TrustError::NoKeys));
}

#[test]
fn signature_manifest_parser_table() {
    let payload = payload_for(&digest("x"));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "malformed"),
        (b"not json".to_vec(), "malformed"),
        (b"{}".to_vec(), "malformed"),
        (br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec(), "index"),
        (
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest("c").to_string(), "size": 2},
                "layers": [{"mediaType": SIMPLE_SIGNING_MEDIA_TYPE, "digest": Digest::sha256_of(&payload).to_string(), "size": 1}],
            }))
            .unwrap(),
            "no simple-signing layer",
        ),
    ];
    for (bytes, needle) in cases {
        let err = signature_layers(&bytes).unwrap_err().to_string();
        assert!(err.contains(needle), "{:?}: {err}", String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn assessment_adds_up() {
    let k = OpensslKey::new("ed25519");
    let s1 = digest("sig1");
    assert_eq!(Assessment::new().verdict(), Verdict::Missing);
    let mut a = Assessment::new();
    a.record(&s1, Err(TrustError::NoSignatureLayer));
    let v = a.verdict();
    assert!(
        matches!(&v, Verdict::Invalid { reasons } if reasons.len() == 1 && reasons[0].contains(&s1.to_string()))
    );
    assert!(v.describe().starts_with("invalid: signature sha256:"));
    let mut a = Assessment::new();
    a.record(&s1, Err(TrustError::NoSignatureLayer));
    a.record(&digest("sig2"), Ok(&k.public));
    assert!(a.verdict().is_valid());
    assert_eq!(signature_tag(&s1), format!("sha256-{}.sig", s1.hex()));
}
