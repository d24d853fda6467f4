//! Bearer tokens presented to the registry (JWTs), through the public `Authority` so that
//! the target survives a change of the token code: raw strings, and tokens whose header and
//! payload are fuzzed but whose HS256 signature is right (what only a key holder could make,
//! to reach the claim checks). Also the scopes a token request asks for and `Basic`
//! credentials.
#![no_main]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use wharf_auth::{AuthConfig, Authority, Scope, TokenKey, TokenSettings};

const SECRET: &str = "fuzzing-secret-fuzzing-secret-0123456789";
const NOW: u64 = 1_700_000_000;

fn authority() -> Authority {
    let token = TokenSettings {
        service: "wharf".into(),
        realm: None,
        key: TokenKey::from_secret(SECRET).expect("a long secret"),
        key_configured: true,
        ttl: Duration::from_secs(300),
        // The rest as a fresh configuration has it, so that a new setting does not break the
        // target (it did: `external` and `builtin_issuer` went unnoticed, since the fuzz
        // workspace is built only by bench/fuzz.sh).
        ..TokenSettings::new()
    };
    Authority::new(AuthConfig { token: Some(token), ..AuthConfig::default() })
}

fuzz_target!(|data: &[u8]| {
    let auth = authority();
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            if let Ok(s) = std::str::from_utf8(rest)
                && auth.verify_token_at(s, NOW).is_ok()
            {
                // Accepted: then it carries our HMAC of exactly what it signs.
                let (input, sig) = s.rsplit_once('.').expect("an accepted token has a signature");
                let mut mac =
                    Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
                mac.update(input.as_bytes());
                let sig = B64.decode(sig).expect("an accepted signature decodes");
                assert_eq!(sig.as_slice(), mac.finalize().into_bytes().as_slice(), "{s:?} verified");
            }
        }
        1 => {
            // header \0 payload, both fuzzed, signed with the right key.
            let (header, payload) = match rest.iter().position(|&b| b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"HS256","typ":"JWT"}"#[..], rest),
            };
            let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
            mac.update(input.as_bytes());
            let token = format!("{input}.{}", B64.encode(mac.finalize().into_bytes()));
            if let Ok(claims) = auth.verify_token_at(&token, NOW) {
                let _ = claims.identity();
                let _ = claims.permits("repository", "a/b", "pull");
                let _ = claims.lifetime();
            }
        }
        2 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(scopes) = Scope::parse_list(s) {
                    for sc in &scopes {
                        let again = Scope::parse(&sc.to_string()).expect("a scope's text parses");
                        assert_eq!(again.to_string(), sc.to_string());
                    }
                }
            }
        }
        _ => {
            if let Ok(s) = std::str::from_utf8(rest) {
                let _ = wharf_auth::parse_basic(s);
            }
        }
    }
});
