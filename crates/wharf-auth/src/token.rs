//! Bearer tokens, through `jsonwebtoken` (RustCrypto backend: the same RSA, P-256 and Ed25519
//! code `wharf-trust` links, no second crypto library):
//!
//! - the built-in issuer's: JWTs signed with HMAC-SHA256 (`HS256`) and `token_key`, over the
//!   claims `iss`, `sub`, `aud` (the service), `exp`, `nbf`, `iat`, `jti` and `access` (the
//!   granted scopes, distribution's claim). Only this server (and its replicas) verify them.
//! - an external token service's (`[auth] token_keys`), as distribution's `auth: token`
//!   accepts them: `RS256`/`RS384`/`RS512`, `PS256`/`PS384`/`PS512`, `ES256`/`ES384` or `EdDSA`,
//!   verified with its public keys (PEM certificates or public keys, or a JWKS), for its
//!   `iss` and this registry's service.
//!
//! The algorithm a token names must be one its key is for: an `HS256` token is checked only
//! with `token_key` (never with a public key as an HMAC secret), `alg: none` is no algorithm.

use std::fmt;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::rules::Identity;
use crate::scope::Scope;

/// Longer tokens are refused before any work is done.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Accepted clock difference for `nbf` (and `exp` of external tokens: other clocks).
const LEEWAY_SECS: u64 = 30;

/// The HMAC key. `Debug` never shows it.
#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// 32 random bytes: tokens are valid until this process exits, and only on this process.
    pub fn random() -> TokenKey {
        let mut k = vec![0u8; 32];
        crate::fill_random(&mut k);
        TokenKey(k)
    }

    /// A configured secret (at least 32 characters), shared by replicas and across restarts.
    pub fn from_secret(secret: &str) -> Result<TokenKey, String> {
        if secret.len() < 32 {
            return Err(format!(
                "token_key must be at least 32 characters (it has {}); generate one with `openssl rand -hex 32`",
                secret.len()
            ));
        }
        Ok(TokenKey(secret.as_bytes().to_vec()))
    }

    /// A key for another purpose (named by `label`), derived from this one: replicas sharing
    /// the token key agree on it, and it reveals nothing of the token key.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name; empty for an anonymous token.
    pub sub: String,
    /// The service the token is for.
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<Scope>,
    /// Wharf's own claim: the directory groups of the user that the rules name, so that what a
    /// token holder may list (the catalog) follows `group:NAME` rules as with basic auth.
    /// Only the built-in issuer sets it; an external issuer's tokens never carry it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Claims {
    pub fn identity(&self) -> Identity {
        match (self.sub.as_str(), self.groups.is_empty()) {
            ("", _) => Identity::Anonymous,
            (user, true) => Identity::User(user.to_owned()),
            (user, false) => Identity::Member { user: user.to_owned(), groups: self.groups.clone() },
        }
    }

    /// Does the token grant `action` on resource `kind`/`name`?
    pub fn permits(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access.iter().any(|s| s.grants(kind, name, action))
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.exp.saturating_sub(self.iat))
    }
}

/// Why a token was refused. Messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not verify (tampered, or issued by another key)")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued for another service or issuer")]
    WrongAudience,
    #[error("the token's algorithm is not accepted here")]
    Algorithm,
}

impl From<jsonwebtoken::errors::Error> for TokenError {
    fn from(e: jsonwebtoken::errors::Error) -> TokenError {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::InvalidSignature => TokenError::BadSignature,
            K::InvalidAudience | K::InvalidIssuer => TokenError::WrongAudience,
            K::ExpiredSignature => TokenError::Expired,
            K::ImmatureSignature => TokenError::NotYetValid,
            K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => TokenError::Algorithm,
            _ => TokenError::Malformed,
        }
    }
}

/// Checks of `jsonwebtoken` for one algorithm family: signature, `iss`, `aud`; times are
/// checked by the caller against its own clock (`now`), so that tests can set it.
fn validation(algorithms: &[Algorithm], issuer: &str, service: &str) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms.to_vec();
    v.set_issuer(&[issuer]);
    v.set_audience(&[service]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.validate_exp = false;
    v.validate_nbf = false;
    v
}

fn check_times(exp: u64, nbf: u64, now: u64, leeway: u64) -> Result<(), TokenError> {
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf > now + LEEWAY_SECS {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// An `HS256` JWT, `header.payload.signature`, each base64url without padding.
pub fn sign(key: &TokenKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(&key.0))
        .expect("HS256 claims serialise and sign")
}

/// Check a token of the built-in issuer: `HS256` with `key` only, then audience, issuer and
/// times.
pub fn verify(
    key: &TokenKey,
    token: &str,
    issuer: &str,
    service: &str,
    now: u64,
) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let v = validation(&[Algorithm::HS256], issuer, service);
    let claims = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key.0), &v)?.claims;
    check_times(claims.exp, claims.nbf, now, 0)?;
    Ok(claims)
}

/// Does the token's header name `HS256` (the built-in issuer's algorithm)? Anything else,
/// malformed included, goes to the external issuer when there is one, and is refused there.
pub(crate) fn is_hs256(token: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN
        && jsonwebtoken::decode_header(token).is_ok_and(|h| h.alg == Algorithm::HS256)
}

/// The key families of an external issuer and the algorithms each may sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    Ec,
    Ed,
}

impl KeyFamily {
    fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyFamily::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyFamily::Ec => &[ES256, ES384],
            KeyFamily::Ed => &[EdDSA],
        }
    }

    fn of(alg: Algorithm) -> Option<KeyFamily> {
        [KeyFamily::Rsa, KeyFamily::Ec, KeyFamily::Ed].into_iter().find(|f| f.algorithms().contains(&alg))
    }
}

/// One public key of an external token service.
#[derive(Clone)]
pub struct PublicKey {
    /// The JWK's `kid`, when the key came from a JWKS.
    pub kid: Option<String>,
    pub family: KeyFamily,
    /// Where it came from, for messages: `FILE` or `FILE#N` (the N-th PEM block or JWK).
    pub source: String,
    key: DecodingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// A key file that could not be used. Never echoes key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct KeyError {
    pub source_name: String,
    pub reason: String,
}

impl PublicKey {
    /// Every key of a key file: a JWKS (`{"keys": [...]}`), or PEM blocks (`CERTIFICATE`,
    /// `PUBLIC KEY`, `RSA PUBLIC KEY`; a bundle may hold several). `name` is for messages.
    pub fn parse_file(text: &str, name: &str) -> Result<Vec<PublicKey>, KeyError> {
        let err = |reason: String| KeyError { source_name: name.to_owned(), reason };
        let keys = if text.trim_start().starts_with('{') {
            let set: JwkSet = serde_json::from_str(text).map_err(|e| err(format!("not a JWKS: {e}")))?;
            let mut keys = Vec::new();
            for (i, jwk) in set.keys.iter().enumerate() {
                let source = format!("{name}#{}", i + 1);
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| err(format!("key {}: unusable JWK ({e})", i + 1)))?;
                let family = match key.family() {
                    jsonwebtoken::AlgorithmFamily::Rsa => KeyFamily::Rsa,
                    jsonwebtoken::AlgorithmFamily::Ec => KeyFamily::Ec,
                    jsonwebtoken::AlgorithmFamily::Ed => KeyFamily::Ed,
                    _ => return Err(err(format!("key {}: a secret (oct) key is not a public key", i + 1))),
                };
                keys.push(PublicKey { kid: jwk.common.key_id.clone(), family, source, key });
            }
            keys
        } else {
            let mut keys = Vec::new();
            for (i, block) in pem_blocks(text).into_iter().enumerate() {
                let source = format!("{name}#{}", i + 1);
                if block.lines().next().is_some_and(|l| l.contains("PRIVATE")) {
                    return Err(err(format!(
                        "PEM block {} is a private key: give the issuer's certificate or public key",
                        i + 1
                    )));
                }
                let parsed = [
                    (KeyFamily::Rsa, DecodingKey::from_rsa_pem(block.as_bytes())),
                    (KeyFamily::Ec, DecodingKey::from_ec_pem(block.as_bytes())),
                    (KeyFamily::Ed, DecodingKey::from_ed_pem(block.as_bytes())),
                ]
                .into_iter()
                .find_map(|(family, k)| k.ok().map(|key| (family, key)));
                let Some((family, key)) = parsed else {
                    let tag = block.lines().next().unwrap_or("").trim();
                    return Err(err(format!(
                        "PEM block {} ({tag}) is not an RSA, EC or Ed25519 certificate or public key",
                        i + 1
                    )));
                };
                keys.push(PublicKey { kid: None, family, source, key });
            }
            keys
        };
        if keys.is_empty() {
            return Err(err("no key in it (expected PEM certificates or public keys, or a JWKS)".into()));
        }
        Ok(keys)
    }
}

/// The `-----BEGIN X----- ... -----END X-----` blocks of a PEM file, in order.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

/// An external token service whose tokens this registry accepts.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    /// The `iss` its tokens carry.
    pub issuer: String,
    pub keys: Vec<PublicKey>,
}

/// What external tokens carry: `aud` may be a list, `nbf`, `iat`, `jti` and `sub` may be
/// absent, `access` too (an empty grant).
#[derive(serde::Deserialize)]
struct ForeignClaims {
    iss: String,
    #[serde(default)]
    sub: String,
    exp: u64,
    nbf: Option<u64>,
    iat: Option<u64>,
    #[serde(default)]
    jti: String,
    #[serde(default)]
    access: Vec<Scope>,
}

impl ExternalIssuer {
    /// Check a token of this issuer for `service`: the header's algorithm picks the key family,
    /// its `kid` (when it names one of the keys) the key; otherwise each key of that family is
    /// tried.
    pub fn verify(&self, token: &str, service: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token)?;
        let family = KeyFamily::of(header.alg).ok_or(TokenError::Algorithm)?;
        let of_family: Vec<&PublicKey> = self.keys.iter().filter(|k| k.family == family).collect();
        let named: Vec<&PublicKey> = match &header.kid {
            Some(kid) => of_family.iter().copied().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let candidates = if named.is_empty() { of_family } else { named };
        if candidates.is_empty() {
            return Err(TokenError::BadSignature);
        }
        let v = validation(family.algorithms(), &self.issuer, service);
        let mut last = TokenError::BadSignature;
        let mut bad_signature = false;
        for key in candidates {
            match jsonwebtoken::decode::<ForeignClaims>(token, &key.key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    let nbf = c.nbf.unwrap_or(0);
                    check_times(c.exp, nbf, now, LEEWAY_SECS)?;
                    return Ok(Claims {
                        iss: c.iss,
                        sub: c.sub,
                        aud: service.to_owned(),
                        exp: c.exp,
                        nbf,
                        iat: c.iat.unwrap_or(nbf),
                        jti: c.jti,
                        access: c.access,
                        // Groups are Wharf's claim: another service's token does not name them.
                        groups: Vec::new(),
                    });
                }
                Err(e) => {
                    last = e.into();
                    match last {
                        // Signed by this key, but not for us: final.
                        TokenError::WrongAudience => return Err(last),
                        TokenError::BadSignature => bad_signature = true,
                        // A key of the family that does not fit (another curve): try the next.
                        _ => {}
                    }
                }
            }
        }
        Err(if bad_signature { TokenError::BadSignature } else { last })
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;
    use crate::rules::Action;

    fn claims(now: u64) -> Claims {
        Claims {
            iss: "wharf".into(),
            sub: "ci".into(),
            aud: "wharf".into(),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: "j1".into(),
            access: vec![Scope::repository("team/app", [Action::Pull, Action::Push]), Scope::catalog()],
            groups: Vec::new(),
        }
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn roundtrip() {
        let key = TokenKey::random();
        let c = claims(NOW);
        let token = sign(&key, &c);
        assert_eq!(token.matches('.').count(), 2);
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        let back = verify(&key, &token, "wharf", "wharf", NOW + 10).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.identity(), Identity::User("ci".into()));
        assert!(back.permits("repository", "team/app", "push"));
        assert!(!back.permits("repository", "team/app", "delete"));
        assert!(back.permits("registry", "catalog", "*"));
        assert_eq!(back.lifetime(), Duration::from_secs(300));
    }

    #[test]
    fn expired_and_early_tokens_are_refused() {
        let key = TokenKey::random();
        let token = sign(&key, &claims(NOW));
        assert_eq!(verify(&key, &token, "wharf", "wharf", NOW + 300), Err(TokenError::Expired));
        assert_eq!(verify(&key, &token, "wharf", "wharf", NOW + 10_000), Err(TokenError::Expired));
        assert_eq!(verify(&key, &token, "wharf", "wharf", NOW - 3600), Err(TokenError::NotYetValid));
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let key = TokenKey::random();
        let token = sign(&key, &claims(NOW));
        let (head, rest) = token.split_once('.').unwrap();
        let (_payload, sig) = rest.split_once('.').unwrap();
        // Grant ourselves delete, keep the signature.
        let mut evil = claims(NOW);
        evil.access[0].actions.push("delete".into());
        let forged = format!("{head}.{}.{sig}", B64.encode(serde_json::to_vec(&evil).unwrap()));
        assert_eq!(verify(&key, &forged, "wharf", "wharf", NOW), Err(TokenError::BadSignature));
        // One flipped character of the signature.
        let mut bytes = token.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(verify(&key, &flipped, "wharf", "wharf", NOW), Err(TokenError::BadSignature));
        // Another key.
        assert_eq!(verify(&TokenKey::random(), &token, "wharf", "wharf", NOW), Err(TokenError::BadSignature));
        // "alg": "none" tokens and garbage.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none"}"#),
            B64.encode(serde_json::to_vec(&evil).unwrap())
        );
        assert!(verify(&key, &none, "wharf", "wharf", NOW).is_err());
        for junk in ["", "abc", "a.b", "a.b.c", "..", &"x".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(verify(&key, junk, "wharf", "wharf", NOW).is_err(), "{junk:.20}");
        }
        // Right key, wrong service.
        assert_eq!(verify(&key, &token, "wharf", "other", NOW), Err(TokenError::WrongAudience));
    }

    #[test]
    fn configured_keys() {
        assert!(TokenKey::from_secret("short").is_err());
        let a = TokenKey::from_secret(&"k".repeat(32)).unwrap();
        let b = TokenKey::from_secret(&"k".repeat(32)).unwrap();
        // Replicas with the same secret accept each other's tokens.
        let token = sign(&a, &claims(NOW));
        assert!(verify(&b, &token, "wharf", "wharf", NOW).is_ok());
        assert!(!format!("{a:?}").contains("kkkk"));
    }

    /// A private key made by `openssl genpkey` (PKCS#8 PEM) and its public key (SPKI PEM)
    /// and self-signed certificate.
    struct OpensslKey {
        private: String,
        public: String,
        cert: String,
    }

    fn openssl_key(args: &[&str]) -> OpensslKey {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let mut genpkey = vec!["genpkey"];
        genpkey.extend_from_slice(args);
        genpkey.extend_from_slice(&["-out", "key.pem"]);
        run(&genpkey);
        run(&["pkey", "-in", "key.pem", "-pubout", "-out", "pub.pem"]);
        run(&[
            "req",
            "-x509",
            "-new",
            "-key",
            "key.pem",
            "-subj",
            "/CN=test issuer",
            "-days",
            "1",
            "-out",
            "cert.pem",
        ]);
        let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
        OpensslKey { private: read("key.pem"), public: read("pub.pem"), cert: read("cert.pem") }
    }

    fn rsa() -> OpensslKey {
        openssl_key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"])
    }

    fn ec() -> OpensslKey {
        openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])
    }

    /// A token as a foreign issuer writes it: `aud` a list, no `jti`, maybe a `kid`.
    fn foreign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, iss: &str, aud: &str) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        let claims = serde_json::json!({
            "iss": iss, "sub": "alice", "aud": [aud], "exp": NOW + 300, "nbf": NOW, "iat": NOW,
            "access": [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}],
        });
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn issuer(keys: Vec<PublicKey>) -> ExternalIssuer {
        ExternalIssuer { issuer: "auth.example.org".into(), keys }
    }

    #[test]
    fn external_rsa_ec_and_ed25519_tokens_verify_with_their_public_keys() {
        let (r, e, ed) = (rsa(), ec(), openssl_key(&["-algorithm", "ED25519"]));
        // Public key, certificate, and several blocks in one bundle.
        let bundle = format!("{}{}", e.cert, ed.public);
        let mut keys = PublicKey::parse_file(&r.public, "rsa.pem").unwrap();
        keys.extend(PublicKey::parse_file(&bundle, "bundle.pem").unwrap());
        assert_eq!(
            keys.iter().map(|k| k.family).collect::<Vec<_>>(),
            [KeyFamily::Rsa, KeyFamily::Ec, KeyFamily::Ed]
        );
        assert_eq!(keys[2].source, "bundle.pem#2");
        let iss = issuer(keys);
        let cases = [
            (Algorithm::RS256, EncodingKey::from_rsa_pem(r.private.as_bytes()).unwrap()),
            (Algorithm::PS256, EncodingKey::from_rsa_pem(r.private.as_bytes()).unwrap()),
            (Algorithm::ES256, EncodingKey::from_ec_pem(e.private.as_bytes()).unwrap()),
            (Algorithm::EdDSA, EncodingKey::from_ed_pem(ed.private.as_bytes()).unwrap()),
        ];
        for (alg, key) in &cases {
            let token = foreign(*alg, key, None, "auth.example.org", "registry.example.org");
            let c = iss
                .verify(&token, "registry.example.org", NOW + 1)
                .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(c.identity(), Identity::User("alice".into()));
            assert!(c.permits("repository", "team/app", "push"));
            assert!(!c.permits("repository", "team/app", "delete"));
            // Another service, another issuer, expired: refused.
            assert_eq!(iss.verify(&token, "other", NOW), Err(TokenError::WrongAudience));
            let other = foreign(*alg, key, None, "evil.example.org", "registry.example.org");
            assert_eq!(iss.verify(&other, "registry.example.org", NOW), Err(TokenError::WrongAudience));
            assert_eq!(iss.verify(&token, "registry.example.org", NOW + 400), Err(TokenError::Expired));
        }
        // A certificate works as well as the bare key.
        let by_cert = issuer(PublicKey::parse_file(&r.cert, "rsa.crt").unwrap());
        let token = foreign(Algorithm::RS256, &cases[0].1, None, "auth.example.org", "r");
        assert!(by_cert.verify(&token, "r", NOW).is_ok());
    }

    #[test]
    fn external_tokens_of_unknown_keys_and_algorithm_tricks_are_refused() {
        let (r, e) = (rsa(), ec());
        let iss = issuer(PublicKey::parse_file(&r.public, "rsa.pem").unwrap());
        let svc = "registry.example.org";
        // Signed by a key the registry does not know (another RSA key; an EC key it has none of).
        let stranger = rsa();
        let t = foreign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(stranger.private.as_bytes()).unwrap(),
            None,
            "auth.example.org",
            svc,
        );
        assert_eq!(iss.verify(&t, svc, NOW), Err(TokenError::BadSignature));
        let t = foreign(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(e.private.as_bytes()).unwrap(),
            None,
            "auth.example.org",
            svc,
        );
        assert_eq!(iss.verify(&t, svc, NOW), Err(TokenError::BadSignature));
        // HS256 with the issuer's public key as the HMAC secret: the classic confusion.
        for secret in [r.public.as_bytes(), r.cert.as_bytes()] {
            let t =
                foreign(Algorithm::HS256, &EncodingKey::from_secret(secret), None, "auth.example.org", svc);
            assert_eq!(iss.verify(&t, svc, NOW), Err(TokenError::Algorithm));
        }
        // alg none, with the claims of a valid token and no signature.
        let good = foreign(
            Algorithm::RS256,
            &EncodingKey::from_rsa_pem(r.private.as_bytes()).unwrap(),
            None,
            "auth.example.org",
            svc,
        );
        assert!(iss.verify(&good, svc, NOW).is_ok());
        let payload = good.split('.').nth(1).unwrap();
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#, r#"{"alg":"RS256"}"#] {
            let t = format!("{}.{payload}.", B64.encode(header));
            assert!(iss.verify(&t, svc, NOW).is_err(), "{header}");
        }
        // The built-in issuer never accepts a foreign algorithm, even with a valid signature.
        assert_eq!(
            verify(&TokenKey::random(), &good, "auth.example.org", svc, NOW),
            Err(TokenError::Algorithm)
        );
    }

    #[test]
    fn jwks_keys_are_chosen_by_kid() {
        let r = rsa();
        // The JWK of the RSA key, from its modulus and exponent (openssl prints them).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pub.pem"), &r.public).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["rsa", "-pubin", "-in", "pub.pem", "-noout", "-modulus"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let modulus_hex =
            String::from_utf8(out.stdout).unwrap().trim().trim_start_matches("Modulus=").to_owned();
        let modulus: Vec<u8> = (0..modulus_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&modulus_hex[i..i + 2], 16).unwrap())
            .collect();
        let other = rsa();
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "k1", "use": "sig", "alg": "RS256", "n": B64.encode(&modulus), "e": "AQAB"},
        ]});
        let mut keys = PublicKey::parse_file(&jwks.to_string(), "jwks.json").unwrap();
        assert_eq!(keys[0].kid.as_deref(), Some("k1"));
        keys.extend(PublicKey::parse_file(&other.public, "other.pem").unwrap());
        let iss = issuer(keys);
        let enc = EncodingKey::from_rsa_pem(r.private.as_bytes()).unwrap();
        for kid in [Some("k1"), None, Some("unknown")] {
            let t = foreign(Algorithm::RS256, &enc, kid, "auth.example.org", "svc");
            assert!(iss.verify(&t, "svc", NOW).is_ok(), "{kid:?}");
        }
        // Bad key files: messages name the file and never echo key material.
        let e =
            PublicKey::parse_file("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "k.pem")
                .unwrap_err();
        assert!(e.to_string().starts_with("k.pem: PEM block 1"), "{e}");
        assert!(PublicKey::parse_file("", "empty.pem").unwrap_err().reason.contains("no key"));
        assert!(PublicKey::parse_file("{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}", "j").is_err());
        assert!(
            PublicKey::parse_file(&r.private, "private.pem").is_err(),
            "a private key is not a public key"
        );
    }
}
