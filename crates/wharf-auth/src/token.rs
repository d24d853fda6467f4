//! Bearer tokens of the built-in issuer: JWTs signed with HMAC-SHA256 (`HS256`) over the
//! claims `iss`, `sub`, `aud` (the service), `exp`, `nbf`, `iat`, `jti` and `access` (the
//! granted scopes, distribution's claim). Only this server verifies them, with the same key.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::rules::Identity;
use crate::scope::Scope;

type HmacSha256 = Hmac<Sha256>;

/// The only header this issuer writes and the only one it accepts (no `alg` games).
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Longer tokens are refused before any work is done.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Accepted clock difference for `nbf`.
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
        let mut mac = self.mac();
        mac.update(label.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
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
}

impl Claims {
    pub fn identity(&self) -> Identity {
        if self.sub.is_empty() { Identity::Anonymous } else { Identity::User(self.sub.clone()) }
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
}

/// `header.payload.signature`, each base64url without padding.
pub fn sign(key: &TokenKey, claims: &Claims) -> String {
    let payload = serde_json::to_vec(claims).expect("claims serialise");
    let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
    let mut mac = key.mac();
    mac.update(signing_input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{signing_input}.{}", B64.encode(sig))
}

/// Check the signature (constant-time), then the header, audience, issuer and times.
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
    let (signing_input, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    let mut mac = key.mac();
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    // Signed by us, so these are ours; checked anyway.
    if B64.decode(header).ok().as_deref() != Some(HEADER.as_bytes()) {
        return Err(TokenError::Malformed);
    }
    let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if claims.aud != service || claims.iss != issuer {
        return Err(TokenError::WrongAudience);
    }
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.nbf > now + LEEWAY_SECS {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
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
}
