//! Public keys as `cosign generate-key-pair` writes them: a PEM `PUBLIC KEY` block holding a
//! PKIX SubjectPublicKeyInfo (ECDSA P-256, Ed25519 or RSA).

use std::fmt;

use p256::ecdsa::signature::Verifier as _;
use rsa::pkcs1::DecodeRsaPublicKey as _;
use sha2::{Digest as _, Sha256};
use spki::SubjectPublicKeyInfoRef;
use spki::der::Decode as _;
use spki::der::asn1::ObjectIdentifier;

use crate::TrustError;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The signature schemes cosign uses with each key type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA over SHA-256, ASN.1 DER signatures.
    EcdsaP256,
    /// Pure Ed25519 over the payload.
    Ed25519,
    /// RSA PKCS#1 v1.5 over SHA-256.
    Rsa,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa => "rsa",
        })
    }
}

#[derive(Clone)]
enum Inner {
    P256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
}

/// A verification key and its fingerprint (`sha256:` of the DER SubjectPublicKeyInfo, the
/// same bytes whatever the PEM line wrapping).
#[derive(Clone)]
pub struct PublicKey {
    inner: Inner,
    fingerprint: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.fingerprint)
    }
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` block (as in `cosign.pub`).
    pub fn from_pem(text: &str) -> Result<PublicKey, TrustError> {
        let (label, der) = pem_rfc7468::decode_vec(text.trim().as_bytes())
            .map_err(|e| TrustError::MalformedKey(format!("not a PEM block: {e}")))?;
        if label != "PUBLIC KEY" {
            return Err(TrustError::MalformedKey(format!(
                "the PEM block is a {label:?}, expected \"PUBLIC KEY\" (cosign.pub, not the private key)"
            )));
        }
        PublicKey::from_der(&der)
    }

    /// Parse a DER SubjectPublicKeyInfo.
    pub fn from_der(der: &[u8]) -> Result<PublicKey, TrustError> {
        let spki = SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| TrustError::MalformedKey(format!("not a SubjectPublicKeyInfo: {e}")))?;
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| TrustError::MalformedKey("the key bit string has unused bits".into()))?;
        let oid = spki.algorithm.oid;
        let inner = if oid == OID_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters_oid().ok();
            if curve != Some(OID_P256) {
                return Err(TrustError::UnsupportedKey(format!(
                    "elliptic curve {} (only P-256 is supported)",
                    curve.map(|c| c.to_string()).unwrap_or_else(|| "unnamed".into())
                )));
            }
            Inner::P256(
                p256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map_err(|_| TrustError::MalformedKey("not a point on P-256".into()))?,
            )
        } else if oid == OID_ED25519 {
            let bytes: &[u8; 32] = bits.try_into().map_err(|_| {
                TrustError::MalformedKey(format!("Ed25519 key of {} bytes, not 32", bits.len()))
            })?;
            Inner::Ed25519(
                ed25519_dalek::VerifyingKey::from_bytes(bytes)
                    .map_err(|_| TrustError::MalformedKey("not an Ed25519 point".into()))?,
            )
        } else if oid == OID_RSA {
            let key = rsa::RsaPublicKey::from_pkcs1_der(bits)
                .map_err(|e| TrustError::MalformedKey(format!("not an RSA public key: {e}")))?;
            Inner::Rsa(rsa::pkcs1v15::VerifyingKey::new(key))
        } else {
            return Err(TrustError::UnsupportedKey(format!("key algorithm {oid}")));
        };
        let fingerprint = format!("sha256:{}", hex::encode(Sha256::digest(der)));
        Ok(PublicKey { inner, fingerprint })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.inner {
            Inner::P256(_) => KeyAlgorithm::EcdsaP256,
            Inner::Ed25519(_) => KeyAlgorithm::Ed25519,
            Inner::Rsa(_) => KeyAlgorithm::Rsa,
        }
    }

    /// `sha256:<hex>` of the DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Verify raw signature bytes over `message` as cosign does for this key type.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), TrustError> {
        let ok = match &self.inner {
            Inner::P256(k) => p256::ecdsa::Signature::from_der(signature)
                .or_else(|_| p256::ecdsa::Signature::from_slice(signature))
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            Inner::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
            Inner::Rsa(k) => {
                rsa::pkcs1v15::Signature::try_from(signature).is_ok_and(|s| k.verify(message, &s).is_ok())
            }
        };
        if ok { Ok(()) } else { Err(TrustError::BadSignature { fingerprint: self.fingerprint.clone() }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with `openssl genpkey` and `openssl pkey -pubout`; cosign writes the same PKIX
    // PEM for its keys.
    const P256_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEb0BQ5rNplij8lAVRAJOV1mtuxZaD
fFxS7rlAqsx0XZ8xIb/iVpsN52WN5PVJv/b9XdmihpisCBqrVbv/FVio7g==
-----END PUBLIC KEY-----";

    #[test]
    fn bad_key_files_are_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "PEM"),
            ("hello", "PEM"),
            ("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----", "PEM"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "PUBLIC KEY"),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "SubjectPublicKeyInfo"),
        ];
        for (text, needle) in cases {
            match PublicKey::from_pem(text) {
                Err(TrustError::MalformedKey(m)) => assert!(m.contains(needle), "{text:?}: {m}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn p256_key_parses_with_stable_fingerprint() {
        let key = PublicKey::from_pem(P256_PEM).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcdsaP256);
        // Line wrapping and surrounding blank lines do not change the fingerprint.
        let rewrapped = format!("\n\n{}\n", P256_PEM);
        assert_eq!(PublicKey::from_pem(&rewrapped).unwrap().fingerprint(), key.fingerprint());
        assert!(key.fingerprint().starts_with("sha256:") && key.fingerprint().len() == 71);
    }

    #[test]
    fn truncated_keys_are_errors_not_panics() {
        let (_, der) = pem_rfc7468::decode_vec(P256_PEM.as_bytes()).unwrap();
        for n in 0..der.len() {
            assert!(PublicKey::from_der(&der[..n]).is_err(), "prefix of {n} bytes");
        }
        // Flipping any byte is either refused or yields another key; never a panic.
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0x5a;
            let _ = PublicKey::from_der(&d);
        }
    }
}
