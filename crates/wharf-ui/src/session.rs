//! Who is looking: the signed session cookie set at login, and the CSRF token of the forms.
//!
//! - `wharf_session` = `hex(user).expiry.hex(hmac)`: HttpOnly, SameSite=Strict, for `/ui`,
//!   valid until `expiry` (unix seconds). The HMAC key is derived from the configured
//!   `token_key` when there is one (replicas then accept each other's sessions), else random
//!   at start.
//! - `wharf_csrf`: a random value set with the first page. Each POST form carries
//!   `hmac(key, value)`; a POST whose field does not match its cookie is refused. Another
//!   site can neither read the cookie nor, with SameSite=Strict, send it.

use axum::http::{HeaderMap, HeaderValue, header};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) const SESSION_COOKIE: &str = "wharf_session";
pub(crate) const CSRF_COOKIE: &str = "wharf_csrf";
/// How long a login lasts.
pub(crate) const SESSION_SECS: u64 = 12 * 3600;

/// The key of session and CSRF MACs.
pub(crate) struct Keys {
    key: [u8; 32],
}

impl Keys {
    /// From the token key (shared by replicas) if configured, else random.
    pub(crate) fn new(auth: Option<&wharf_auth::Authority>) -> Keys {
        if let Some(t) = auth.and_then(|a| a.token_settings()).filter(|t| t.key_configured) {
            return Keys { key: t.key.derive("wharf-ui session v1") };
        }
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            // Without randomness no session can be trusted: sessions signed with this key
            // are refused below, so nobody can log in (anonymous browsing still works).
            tracing::error!("no random numbers for the UI's session key: logins are disabled");
            return Keys { key: [0; 32] };
        }
        Keys { key }
    }

    fn usable(&self) -> bool {
        self.key != [0; 32]
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// The cookie value of a session of `user` until `expires`.
    pub(crate) fn session_value(&self, user: &str, expires: u64) -> String {
        let exp = expires.to_string();
        let mac = self.mac(&[b"session", user.as_bytes(), exp.as_bytes()]);
        format!("{}.{exp}.{mac}", hex::encode(user))
    }

    /// The user of a valid, unexpired session cookie value.
    pub(crate) fn session_user(&self, value: &str, now: u64) -> Option<String> {
        if !self.usable() {
            return None;
        }
        let mut parts = value.split('.');
        let (user_hex, exp, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let user = String::from_utf8(hex::decode(user_hex).ok()?).ok()?;
        let expires: u64 = exp.parse().ok()?;
        let expected = self.mac(&[b"session", user.as_bytes(), exp.as_bytes()]);
        (constant_time_eq(expected.as_bytes(), mac.as_bytes()) && now < expires).then_some(user)
    }

    /// The form field that goes with a CSRF cookie value.
    pub(crate) fn csrf_token(&self, cookie: &str) -> String {
        self.mac(&[b"csrf", cookie.as_bytes()])
    }

    pub(crate) fn csrf_ok(&self, cookie: Option<&str>, field: Option<&str>) -> bool {
        match (cookie, field) {
            (Some(c), Some(f)) if !c.is_empty() => {
                constant_time_eq(self.csrf_token(c).as_bytes(), f.as_bytes())
            }
            _ => false,
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random CSRF cookie value.
pub(crate) fn new_csrf_value() -> String {
    let mut b = [0u8; 16];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Came the request over https (directly, or says the proxy in front)?
fn https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value; `max_age` 0 deletes the cookie.
pub(crate) fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if https(headers) { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys { key: [7; 32] }
    }

    #[test]
    fn sessions_verify_and_expire() {
        let k = keys();
        let v = k.session_value("dev", 1000);
        assert_eq!(k.session_user(&v, 999), Some("dev".into()));
        assert_eq!(k.session_user(&v, 1000), None, "expired");
        // Another user or a later expiry under the same MAC is refused.
        let (_, rest) = v.split_once('.').unwrap();
        assert_eq!(k.session_user(&format!("{}.{rest}", hex::encode("admin")), 0), None);
        let forged = v.replacen(".1000.", ".99999.", 1);
        assert_eq!(k.session_user(&forged, 0), None);
        assert_eq!(Keys { key: [8; 32] }.session_user(&v, 0), None, "another key");
        assert_eq!(k.session_user("garbage", 0), None);
        assert_eq!(Keys { key: [0; 32] }.session_user(&Keys { key: [0; 32] }.session_value("a", 9), 0), None);
    }

    #[test]
    fn csrf_tokens_match_their_cookie() {
        let k = keys();
        let t = k.csrf_token("abc");
        assert!(k.csrf_ok(Some("abc"), Some(&t)));
        assert!(!k.csrf_ok(Some("abd"), Some(&t)));
        assert!(!k.csrf_ok(None, Some(&t)));
        assert!(!k.csrf_ok(Some("abc"), None));
        assert!(!k.csrf_ok(Some(""), Some(&k.csrf_token(""))));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; wharf_session=x.y.z; b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("x.y.z"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
