//! Tokens of an external token service (issue 13), as distribution's `auth: token` accepts
//! them: a test issuer signs with an RSA key (its public key configured as PEM) and an EC key
//! (its self-signed certificate configured), both made by `openssl`. Pulls and pushes go
//! through real requests; tokens of unknown keys, `alg: none` and HS256 made with the public
//! key are refused. On SQLite: verification does not touch storage.

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::json;
use wharf_server::wharf_auth::{AuthConfig, ExternalIssuer, PublicKey, Rule, TokenSettings, now_secs};

use crate::auth::{AuthServer, Creds, challenge};
use crate::harness::{Backend, expect_error};

const ISSUER: &str = "auth.test";
const SERVICE: &str = "registry.test";
const REALM: &str = "https://auth.test/token";

struct Keys {
    rsa_private: String,
    rsa_public: String,
    ec_private: String,
    ec_cert: String,
    stranger_private: String,
}

/// Runs `openssl` in `dir`; panics (the test fails) when it is missing or fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, alg) in [("rsa", "rsa_keygen_bits:2048"), ("stranger", "rsa_keygen_bits:2048")] {
            openssl(d, &["genpkey", "-algorithm", "RSA", "-pkeyopt", alg, "-out", &format!("{name}.key")]);
        }
        openssl(d, &["pkey", "-in", "rsa.key", "-pubout", "-out", "rsa.pub"]);
        openssl(d, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ec.key"]);
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ec.key",
                "-subj",
                "/CN=auth.test",
                "-days",
                "1",
                "-out",
                "ec.crt",
            ],
        );
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        Keys {
            rsa_private: read("rsa.key"),
            rsa_public: read("rsa.pub"),
            ec_private: read("ec.key"),
            ec_cert: read("ec.crt"),
            stranger_private: read("stranger.key"),
        }
    })
}

/// Only the external service issues tokens; alice may push team/** by the rules too (so a
/// token lacking push is asked to get one, not denied).
fn external_auth() -> AuthConfig {
    let k = keys();
    let mut public = PublicKey::parse_file(&k.rsa_public, "rsa.pub").unwrap();
    public.extend(PublicKey::parse_file(&k.ec_cert, "ec.crt").unwrap());
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    AuthConfig {
        htpasswd: None,
        rules: vec![Rule::new("team/**", &s(&["alice"]), &s(&["alice"]), &[]).unwrap()],
        token: Some(TokenSettings {
            service: SERVICE.into(),
            realm: Some(REALM.into()),
            external: Some(ExternalIssuer { issuer: ISSUER.into(), keys: public }),
            builtin_issuer: false,
            ..TokenSettings::new()
        }),
    }
}

fn token(alg: Algorithm, key: &EncodingKey, access: &str, exp_in: i64) -> String {
    let now = now_secs() as i64;
    let (name, actions) = access.rsplit_once(':').unwrap();
    let actions: Vec<&str> = actions.split(',').collect();
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": SERVICE, "exp": now + exp_in, "nbf": now - 5, "iat": now - 5,
        "jti": "t1", "access": [{"type": "repository", "name": name, "actions": actions}],
    });
    jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(keys().rsa_private.as_bytes()).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(keys().ec_private.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_rsa_and_ec_tokens_push_and_pull() {
    let s = AuthServer::start(Backend::Sqlite, external_auth).await;
    // The challenge sends clients to the external service.
    let resp = s.send(Method::GET, "/v2/team/app/manifests/v1", &Creds::Anonymous).await;
    assert_eq!(
        challenge(&resp),
        format!("Bearer realm=\"{REALM}\",service=\"{SERVICE}\",scope=\"repository:team/app:pull\"")
    );
    // This registry issues no tokens itself.
    assert_eq!(s.send(Method::GET, "/token", &Creds::Anonymous).await.status(), StatusCode::NOT_FOUND);

    // RS256: push an image.
    let push = Creds::Bearer(token(Algorithm::RS256, &rsa_key(), "team/app:pull,push", 300));
    let (digest, layer) = s.push_image("team/app", "v1", &push).await;
    // ES256 (key from a certificate): pull it.
    let pull = Creds::Bearer(token(Algorithm::ES256, &ec_key(), "team/app:pull", 300));
    let resp = s.send(Method::GET, "/v2/team/app/manifests/v1", &pull).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-content-digest"], digest.to_string().as_str());
    let resp = s.send(Method::GET, &format!("/v2/team/app/blobs/{layer}"), &pull).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // The token's scopes decide: pull only cannot push; nothing for another repository.
    let resp = s.send(Method::POST, "/v2/team/app/blobs/uploads/", &pull).await;
    assert!(challenge(&resp).contains("error=\"insufficient_scope\""), "{}", challenge(&resp));
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let resp = s.send(Method::GET, "/v2/team/other/tags/list", &pull).await;
    assert!(challenge(&resp).contains("scope=\"repository:team/other:pull\""), "{}", challenge(&resp));
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_tokens_of_unknown_keys_and_algorithm_tricks_are_refused() {
    let s = AuthServer::start(Backend::Sqlite, external_auth).await;
    let k = keys();
    let good = token(Algorithm::RS256, &rsa_key(), "team/app:pull", 300);
    assert_eq!(
        s.send(Method::GET, "/v2/team/app/tags/list", &Creds::Bearer(good.clone())).await.status(),
        StatusCode::NOT_FOUND
    );
    let payload = good.split('.').nth(1).unwrap().to_owned();
    // base64url of {"alg":"none","typ":"JWT"}.
    const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let refused = [
        // Signed by a key this registry does not know.
        (
            "unknown key",
            token(
                Algorithm::RS256,
                &EncodingKey::from_rsa_pem(k.stranger_private.as_bytes()).unwrap(),
                "team/app:pull",
                300,
            ),
        ),
        // HS256 with the issuer's public key (or certificate) as the HMAC secret.
        (
            "HS256 with the public key",
            token(Algorithm::HS256, &EncodingKey::from_secret(k.rsa_public.as_bytes()), "team/app:pull", 300),
        ),
        (
            "HS256 with the certificate",
            token(Algorithm::HS256, &EncodingKey::from_secret(k.ec_cert.as_bytes()), "team/app:pull", 300),
        ),
        // alg none: a valid token's claims, no signature.
        ("alg none", format!("{NONE_HEADER}.{payload}.")),
        // Expired (beyond the clock leeway).
        ("expired", token(Algorithm::ES256, &ec_key(), "team/app:pull", -120)),
    ];
    for (what, t) in refused {
        let resp = s.send(Method::GET, "/v2/team/app/tags/list", &Creds::Bearer(t)).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
}

/// The testkit's token service (the one distribution 2.8 trusts in the testkit): ES256, its
/// key in a self-signed certificate, a libtrust `kid`, every asked scope granted anonymously.
fn testkit_issuer() -> &'static (tempfile::TempDir, wharf_testkit::TokenIssuer) {
    static ISSUER: OnceLock<(tempfile::TempDir, wharf_testkit::TokenIssuer)> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let issuer = wharf_testkit::TokenIssuer::start(dir.path(), None);
        (dir, issuer)
    })
}

fn testkit_auth() -> AuthConfig {
    let (dir, issuer) = testkit_issuer();
    let cert = std::fs::read_to_string(dir.path().join("cert.pem")).unwrap();
    AuthConfig {
        htpasswd: None,
        rules: Vec::new(),
        token: Some(TokenSettings {
            service: wharf_testkit::TOKEN_SERVICE.into(),
            realm: Some(issuer.realm.clone()),
            external: Some(ExternalIssuer {
                issuer: wharf_testkit::TOKEN_ISSUER.into(),
                keys: PublicKey::parse_file(&cert, "cert.pem").unwrap(),
            }),
            builtin_issuer: false,
            ..TokenSettings::new()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_with_tokens_of_an_external_service() {
    let s = AuthServer::start(Backend::Sqlite, testkit_auth).await;
    let host = s.base.trim_start_matches("http://").to_owned();
    let image = wharf_testkit::TestImage::builder().seed(13).build();
    let dir = tempfile::tempdir().unwrap();
    image.write_oci_layout(dir.path());
    let src = image.oci_ref(dir.path());
    let dest = format!("docker://{host}/team/app:v1");
    let raw = tokio::task::spawn_blocking(move || {
        wharf_testkit::run_ok(wharf_testkit::skopeo([
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &src,
            &dest,
        ]));
        wharf_testkit::skopeo_inspect_raw(&dest)
    })
    .await
    .unwrap();
    assert_eq!(raw, image.index.bytes, "the index comes back byte for byte");
    // skopeo got its tokens from the external service, not from this registry.
    let asked = testkit_issuer().1.requests();
    assert!(asked.iter().any(|q| q.contains("team%2Fapp") || q.contains("team/app")), "{asked:?}");
    // Without a token: asked to get one there.
    let resp = s.send(Method::GET, "/v2/team/app/manifests/v1", &Creds::Anonymous).await;
    assert!(challenge(&resp).starts_with(&format!("Bearer realm=\"{}\"", testkit_issuer().1.realm)));
}
