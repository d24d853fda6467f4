//! Authentication and authorization over real HTTP: basic auth against htpasswd (bcrypt),
//! the Docker token flow with the built-in issuer, per-pattern permissions, the filtered
//! catalog and mounts from repositories the caller cannot read.

use reqwest::header::WWW_AUTHENTICATE;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use wharf_oci::Digest;
use wharf_registry::RegistryConfig;
use wharf_server::wharf_auth::{AuthConfig, Authority, Htpasswd, Rule, TokenKey, TokenSettings};

use crate::harness::{AuthFactory, Backend, OCI_MANIFEST, Server, expect_error};

crate::backend_tests!(
    basic_anonymous_pulls_public_repositories_only,
    basic_push_needs_the_right_user,
    basic_delete_is_for_admins,
    basic_catalog_lists_what_the_user_may_pull,
    mount_from_an_unreadable_repository_opens_an_upload,
    token_challenges_have_the_docker_shape,
    token_endpoint_grants_the_intersection,
    bearer_tokens_authorize_by_scope,
    token_catalog_needs_its_scope_and_is_filtered,
);

const TOKEN_KEY: &str = "test-token-key-0123456789abcdef0123456789";

/// Users ci/pw, admin/root, dev/devpw; public/** readable by anyone, private/** by any
/// user, team/** by dev only.
pub(crate) fn auth_config(token: bool) -> AuthConfig {
    let users = [("ci", "pw"), ("admin", "root"), ("dev", "devpw")];
    let text: String = users.iter().map(|(u, p)| Htpasswd::hash_line(u, p, 4).unwrap() + "\n").collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    AuthConfig {
        htpasswd: Some(Htpasswd::parse(&text).unwrap()),
        rules: vec![
            Rule::new("public/**", &s(&["*"]), &s(&["ci"]), &s(&["admin"])).unwrap(),
            Rule::new("private/**", &s(&["authenticated"]), &s(&["ci"]), &s(&["admin"])).unwrap(),
            Rule::new("team/**", &s(&["dev"]), &s(&["dev"]), &[]).unwrap(),
        ],
        token: token.then(|| TokenSettings {
            key: TokenKey::from_secret(TOKEN_KEY).unwrap(),
            key_configured: true,
            ..TokenSettings::new()
        }),
    }
}

/// Basic auth against the htpasswd users.
pub(crate) fn basic_auth() -> AuthConfig {
    auth_config(false)
}

/// The Docker token flow, every replica signing with the same key.
pub(crate) fn token_auth() -> AuthConfig {
    auth_config(true)
}

/// Decodes tokens of the server under test (same key).
fn verifier() -> Authority {
    Authority::new(auth_config(true))
}

pub(crate) struct AuthServer {
    pub(crate) base: String,
    client: reqwest::Client,
    pub(crate) server: Server,
}

#[derive(Clone)]
pub(crate) enum Creds {
    Anonymous,
    Basic(&'static str, &'static str),
    Bearer(String),
}

impl AuthServer {
    pub(crate) async fn start(backend: Backend, auth: AuthFactory) -> AuthServer {
        let server = Server::start_full(backend, RegistryConfig::default(), Some(auth)).await;
        AuthServer::over(server)
    }

    /// The helpers over a server started elsewhere (with its own `Authority`).
    pub(crate) fn over(server: Server) -> AuthServer {
        AuthServer { base: server.base.clone(), client: reqwest::Client::new(), server }
    }

    pub(crate) fn req(&self, method: Method, path: &str, creds: &Creds) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match creds {
            Creds::Anonymous => rb,
            Creds::Basic(u, p) => rb.basic_auth(u, Some(p)),
            Creds::Bearer(t) => rb.bearer_auth(t),
        }
    }

    pub(crate) async fn send(&self, method: Method, path: &str, creds: &Creds) -> reqwest::Response {
        self.req(method, path, creds).send().await.unwrap()
    }

    pub(crate) async fn push_blob(&self, repo: &str, bytes: &[u8], creds: &Creds) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"), creds)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        digest
    }

    /// Config + layer + manifest tagged `tag`; returns the manifest digest and the layer's.
    pub(crate) async fn push_image(&self, repo: &str, tag: &str, creds: &Creds) -> (Digest, Digest) {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","repo":"{repo}"}}"#);
        let layer = format!("layer of {repo}").into_bytes();
        let c = self.push_blob(repo, config.as_bytes(), creds).await;
        let l = self.push_blob(repo, &layer, creds).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        );
        let resp = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{tag}"), creds)
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        (Digest::sha256_of(manifest.as_bytes()), l)
    }

    /// A token from `/token` for `scopes` (each one `scope` parameter).
    pub(crate) async fn token(&self, creds: &Creds, scopes: &[&str]) -> String {
        let mut q: Vec<(&str, &str)> = vec![("service", "wharf")];
        q.extend(scopes.iter().map(|s| ("scope", *s)));
        let resp = self.req(Method::GET, "/token", creds).query(&q).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
        let body: Value = resp.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }
}

pub(crate) fn challenge(resp: &reqwest::Response) -> String {
    resp.headers().get(WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

pub(crate) async fn expect_401(resp: reqwest::Response, challenge_is: &str) {
    assert_eq!(challenge(&resp), challenge_is);
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
}

pub(crate) const BASIC: &str = "Basic realm=\"wharf\"";
pub(crate) const CI: Creds = Creds::Basic("ci", "pw");
pub(crate) const ADMIN: Creds = Creds::Basic("admin", "root");
pub(crate) const DEV: Creds = Creds::Basic("dev", "devpw");
pub(crate) const ANON: Creds = Creds::Anonymous;

async fn basic_anonymous_pulls_public_repositories_only(backend: Backend) {
    let s = AuthServer::start(backend, basic_auth).await;
    let (digest, layer) = s.push_image("public/app", "v1", &CI).await;
    s.push_image("private/app", "v1", &CI).await;

    // Anonymous reads of the public pattern work without any challenge.
    let resp = s.send(Method::GET, "/v2/public/app/manifests/v1", &ANON).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-content-digest"], digest.to_string().as_str());
    let resp = s.send(Method::HEAD, &format!("/v2/public/app/blobs/{layer}"), &ANON).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = s.send(Method::GET, "/v2/public/app/tags/list", &ANON).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Empty basic credentials (what containers/image sends without any) are anonymous.
    let resp = s.send(Method::GET, "/v2/public/app/manifests/v1", &Creds::Basic("", "")).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Private: anonymous is asked to log in, before anything says whether it exists.
    for path in
        ["/v2/private/app/manifests/v1", "/v2/private/nothing/manifests/v1", "/v2/elsewhere/tags/list"]
    {
        expect_401(s.send(Method::GET, path, &ANON).await, BASIC).await;
    }
    let resp = s.send(Method::GET, "/v2/private/app/manifests/v1", &DEV).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // /v2/ challenges requests without credentials (clients learn the scheme there).
    expect_401(s.send(Method::GET, "/v2/", &ANON).await, BASIC).await;
    expect_401(s.send(Method::GET, "/v2/", &Creds::Basic("", "")).await, BASIC).await;
    expect_401(s.send(Method::GET, "/v2/", &Creds::Basic("ci", "nope")).await, BASIC).await;
    assert_eq!(s.send(Method::GET, "/v2/", &CI).await.status(), StatusCode::OK);
    // A bearer token means nothing in basic mode.
    expect_401(s.send(Method::GET, "/v2/public/app/tags/list", &Creds::Bearer("x.y.z".into())).await, BASIC)
        .await;
    // Health and metrics stay open.
    assert_eq!(s.send(Method::GET, "/healthz", &ANON).await.status(), StatusCode::OK);
    assert_eq!(s.send(Method::GET, "/metrics", &ANON).await.status(), StatusCode::OK);
    // No token endpoint in basic mode.
    assert_eq!(s.send(Method::GET, "/token", &ANON).await.status(), StatusCode::NOT_FOUND);
}

async fn basic_push_needs_the_right_user(backend: Backend) {
    let s = AuthServer::start(backend, basic_auth).await;
    let start = "/v2/public/app/blobs/uploads/";
    // No credentials: 401 with the basic challenge.
    expect_401(s.send(Method::POST, start, &ANON).await, BASIC).await;
    // Wrong password, unknown user: 401 too.
    expect_401(s.send(Method::POST, start, &Creds::Basic("ci", "wrong")).await, BASIC).await;
    expect_401(s.send(Method::POST, start, &Creds::Basic("mallory", "pw")).await, BASIC).await;
    // A user who logged in but may not push: 403 DENIED, naming who and what.
    let body = expect_error(s.send(Method::POST, start, &DEV).await, StatusCode::FORBIDDEN, "DENIED").await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("\"dev\"") && message.contains("push public/app"), "{message}");
    // ci may.
    let resp = s.send(Method::POST, start, &CI).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    // The rest of the upload needs push too.
    expect_401(s.send(Method::GET, &location, &ANON).await, BASIC).await;
    expect_error(s.send(Method::DELETE, &location, &DEV).await, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(s.send(Method::GET, &location, &CI).await.status(), StatusCode::NO_CONTENT);
    // Manifests: dev pushes in team/, not in public/.
    s.push_image("team/tool", "v1", &DEV).await;
    let resp = s
        .req(Method::PUT, "/v2/public/app/manifests/v1", &DEV)
        .header("content-type", OCI_MANIFEST)
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    // ci cannot even read team/.
    expect_error(
        s.send(Method::GET, "/v2/team/tool/manifests/v1", &CI).await,
        StatusCode::FORBIDDEN,
        "DENIED",
    )
    .await;
}

async fn basic_delete_is_for_admins(backend: Backend) {
    let s = AuthServer::start(backend, basic_auth).await;
    let (digest, layer) = s.push_image("public/app", "v1", &CI).await;
    let manifest = format!("/v2/public/app/manifests/{digest}");
    expect_401(s.send(Method::DELETE, &manifest, &ANON).await, BASIC).await;
    expect_error(s.send(Method::DELETE, &manifest, &CI).await, StatusCode::FORBIDDEN, "DENIED").await;
    expect_error(
        s.send(Method::DELETE, &format!("/v2/public/app/blobs/{layer}"), &CI).await,
        StatusCode::FORBIDDEN,
        "DENIED",
    )
    .await;
    assert_eq!(s.send(Method::DELETE, &manifest, &ADMIN).await.status(), StatusCode::ACCEPTED);
    expect_error(s.send(Method::GET, &manifest, &ANON).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        .await;
}

async fn catalog(s: &AuthServer, creds: &Creds, query: &str) -> (Vec<String>, Option<String>) {
    let resp = s.send(Method::GET, &format!("/v2/_catalog{query}"), creds).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let link = resp.headers().get("link").map(|l| l.to_str().unwrap().to_owned());
    let body: Value = resp.json().await.unwrap();
    let repos =
        body["repositories"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    (repos, link)
}

async fn basic_catalog_lists_what_the_user_may_pull(backend: Backend) {
    let s = AuthServer::start(backend, basic_auth).await;
    s.push_image("public/a", "v1", &CI).await;
    s.push_image("private/b", "v1", &CI).await;
    s.push_image("team/c", "v1", &DEV).await;
    s.push_image("public/d", "v1", &CI).await;
    expect_401(s.send(Method::GET, "/v2/_catalog", &ANON).await, BASIC).await;
    assert_eq!(catalog(&s, &CI, "").await.0, ["private/b", "public/a", "public/d"]);
    assert_eq!(catalog(&s, &DEV, "").await.0, ["private/b", "public/a", "public/d", "team/c"]);
    // Pages are over the filtered list.
    let (page, link) = catalog(&s, &CI, "?n=2").await;
    assert_eq!(page, ["private/b", "public/a"]);
    assert_eq!(link.as_deref(), Some("</v2/_catalog?n=2&last=public/a>; rel=\"next\""));
    let (page, link) = catalog(&s, &CI, "?n=2&last=public/a").await;
    assert_eq!(page, ["public/d"]);
    assert_eq!(link, None);
    let (page, _) = catalog(&s, &DEV, "?n=1&last=public/d").await;
    assert_eq!(page, ["team/c"]);
}

async fn mount_from_an_unreadable_repository_opens_an_upload(backend: Backend) {
    let s = AuthServer::start(backend, basic_auth).await;
    let (_, team_layer) = s.push_image("team/c", "v1", &DEV).await;
    let (_, private_layer) = s.push_image("private/b", "v1", &CI).await;
    // ci may not read team/c: no mount, an upload session instead (never a 403).
    let resp = s
        .send(Method::POST, &format!("/v2/public/x/blobs/uploads/?mount={team_layer}&from=team/c"), &CI)
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.headers()["location"].to_str().unwrap().starts_with("/v2/public/x/blobs/uploads/"));
    // Nor read it through public/x afterwards.
    let resp = s.send(Method::HEAD, &format!("/v2/public/x/blobs/{team_layer}"), &CI).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Without `from`, no mount either (it would search every repository).
    let resp = s.send(Method::POST, &format!("/v2/public/x/blobs/uploads/?mount={team_layer}"), &CI).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // From a repository ci may pull: mounted.
    let resp = s
        .send(Method::POST, &format!("/v2/public/x/blobs/uploads/?mount={private_layer}&from=private/b"), &CI)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = s.send(Method::HEAD, &format!("/v2/public/x/blobs/{private_layer}"), &ANON).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn token_challenges_have_the_docker_shape(backend: Backend) {
    let s = AuthServer::start(backend, token_auth).await;
    let host = s.base.trim_start_matches("http://");
    let realm = format!("Bearer realm=\"http://{host}/token\",service=\"wharf\"");
    expect_401(s.send(Method::GET, "/v2/", &ANON).await, &realm).await;
    expect_401(
        s.send(Method::GET, "/v2/private/x/manifests/v1", &ANON).await,
        &format!("{realm},scope=\"repository:private/x:pull\""),
    )
    .await;
    expect_401(
        s.send(Method::POST, "/v2/public/app/blobs/uploads/", &ANON).await,
        &format!("{realm},scope=\"repository:public/app:pull,push\""),
    )
    .await;
    expect_401(
        s.send(Method::DELETE, &format!("/v2/public/app/manifests/{}", Digest::sha256_of(b"x")), &ANON).await,
        &format!("{realm},scope=\"repository:public/app:delete\""),
    )
    .await;
    expect_401(
        s.send(Method::GET, "/v2/_catalog", &ANON).await,
        &format!("{realm},scope=\"registry:catalog:*\""),
    )
    .await;
    // The realm follows the Host the client used (and X-Forwarded-Proto).
    let resp = s
        .req(Method::GET, "/v2/", &ANON)
        .header("host", "registry.example.com:5000")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"https://registry.example.com:5000/token\",service=\"wharf\""
    );
    // A configured realm and service win.
    fn with_realm() -> AuthConfig {
        let mut config = auth_config(true);
        let t = config.token.as_mut().unwrap();
        t.realm = Some("https://auth.example.com/token".into());
        t.service = "registry.example.com".into();
        config
    }
    let s2 = AuthServer::start(backend, with_realm).await;
    let resp = s2.send(Method::GET, "/v2/public/a/tags/list", &Creds::Basic("ci", "wrong")).await;
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"https://auth.example.com/token\",service=\"registry.example.com\",scope=\"repository:public/a:pull\""
    );
}

async fn token_endpoint_grants_the_intersection(backend: Backend) {
    let s = AuthServer::start(backend, token_auth).await;
    let v = verifier();
    let resp = s
        .req(Method::GET, "/token", &CI)
        .query(&[
            ("service", "wharf"),
            ("scope", "repository:public/app:pull,push,delete"),
            ("scope", "repository:team/c:pull repository:private/b:pull"),
            ("scope", "registry:catalog:*"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    let issued_at = body["issued_at"].as_str().unwrap();
    assert!(
        issued_at.len() == 20 && issued_at.ends_with('Z') && issued_at.as_bytes()[10] == b'T',
        "{issued_at}"
    );
    let claims = v.verify_token(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.sub, "ci");
    assert_eq!(claims.aud, "wharf");
    let access = serde_json::to_value(&claims.access).unwrap();
    assert_eq!(
        access,
        serde_json::json!([
            {"type": "repository", "name": "public/app", "actions": ["pull", "push"]},
            {"type": "repository", "name": "private/b", "actions": ["pull"]},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
        ])
    );
    // Anonymous: a token with what anyone may do; an empty grant is still a token.
    let t = s.token(&ANON, &["repository:public/app:pull,push", "repository:private/b:pull"]).await;
    let claims = v.verify_token(&t).unwrap();
    assert_eq!(claims.sub, "");
    assert_eq!(serde_json::to_value(&claims.access).unwrap()[0]["actions"], serde_json::json!(["pull"]));
    assert_eq!(claims.access.len(), 1);
    let t = s.token(&ANON, &["repository:team/c:pull"]).await;
    assert!(v.verify_token(&t).unwrap().access.is_empty());
    // No scope at all (podman login): a token for the user.
    let t = s.token(&CI, &[]).await;
    assert_eq!(v.verify_token(&t).unwrap().sub, "ci");
    // Wrong password: 401 asking for basic auth.
    let resp = s.req(Method::GET, "/token?service=wharf", &Creds::Basic("ci", "bad")).send().await.unwrap();
    expect_401(resp, BASIC).await;
    // Another service, or a malformed scope: 400.
    let resp = s.send(Method::GET, "/token?service=other&scope=repository:public/app:pull", &CI).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    let resp = s.send(Method::GET, "/token?scope=repository:public/app", &CI).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
}

async fn bearer_tokens_authorize_by_scope(backend: Backend) {
    let s = AuthServer::start(backend, token_auth).await;
    let host = s.base.trim_start_matches("http://");
    let realm = format!("Bearer realm=\"http://{host}/token\",service=\"wharf\"");
    let ci = Creds::Bearer(s.token(&CI, &["repository:public/app:pull,push"]).await);
    let (digest, _) = s.push_image("public/app", "v1", &ci).await;
    assert_eq!(s.send(Method::GET, "/v2/", &ci).await.status(), StatusCode::OK);
    // An anonymous token pulls the public repository, and cannot push.
    let anon = Creds::Bearer(s.token(&ANON, &["repository:public/app:pull,push"]).await);
    let resp = s.send(Method::GET, "/v2/public/app/manifests/v1", &anon).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-content-digest"], digest.to_string().as_str());
    expect_401(
        s.send(Method::POST, "/v2/public/app/blobs/uploads/", &anon).await,
        &format!("{realm},scope=\"repository:public/app:pull,push\""),
    )
    .await;
    // A token without a scope the rules would grant: a challenge for it.
    let pull_only = Creds::Bearer(s.token(&CI, &["repository:public/app:pull"]).await);
    expect_401(
        s.send(Method::POST, "/v2/public/app/blobs/uploads/", &pull_only).await,
        &format!("{realm},scope=\"repository:public/app:pull,push\",error=\"insufficient_scope\""),
    )
    .await;
    // What the rules refuse the user: denied.
    let resp = s.send(Method::DELETE, &format!("/v2/public/app/manifests/{digest}"), &ci).await;
    expect_error(resp, StatusCode::FORBIDDEN, "DENIED").await;
    let admin = Creds::Bearer(s.token(&ADMIN, &["repository:public/app:*"]).await);
    let resp = s.send(Method::DELETE, &format!("/v2/public/app/manifests/{digest}"), &admin).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // A tampered token (one more character in the payload) is refused.
    let Creds::Bearer(t) = &ci else { unreachable!() };
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    parts[1].insert(5, 'A');
    let tampered = Creds::Bearer(parts.join("."));
    expect_401(
        s.send(Method::GET, "/v2/public/app/tags/list", &tampered).await,
        &format!("{realm},scope=\"repository:public/app:pull\""),
    )
    .await;
    expect_401(s.send(Method::GET, "/v2/", &Creds::Bearer("garbage".into())).await, &realm).await;
    // A token of another server (another key) is refused too.
    let mut other = auth_config(true);
    other.token.as_mut().unwrap().key = TokenKey::random();
    let foreign = Authority::new(other)
        .issue(&wharf_server::wharf_auth::Identity::User("admin".into()), &[])
        .unwrap()
        .token;
    expect_401(s.send(Method::GET, "/v2/", &Creds::Bearer(foreign)).await, &realm).await;
    // Basic credentials are accepted directly too (curl -u).
    assert_eq!(s.send(Method::GET, "/v2/public/app/tags/list", &CI).await.status(), StatusCode::OK);
}

async fn token_catalog_needs_its_scope_and_is_filtered(backend: Backend) {
    let s = AuthServer::start(backend, token_auth).await;
    let host = s.base.trim_start_matches("http://");
    let realm = format!("Bearer realm=\"http://{host}/token\",service=\"wharf\"");
    s.push_image("public/a", "v1", &CI).await;
    s.push_image("private/b", "v1", &CI).await;
    s.push_image("team/c", "v1", &DEV).await;
    let with_scope = Creds::Bearer(s.token(&CI, &["registry:catalog:*"]).await);
    assert_eq!(catalog(&s, &with_scope, "").await.0, ["private/b", "public/a"]);
    let dev = Creds::Bearer(s.token(&DEV, &["registry:catalog:*"]).await);
    assert_eq!(catalog(&s, &dev, "").await.0, ["private/b", "public/a", "team/c"]);
    // A user's token without the catalog scope: asked to get one.
    let without = Creds::Bearer(s.token(&CI, &["repository:public/a:pull"]).await);
    expect_401(
        s.send(Method::GET, "/v2/_catalog", &without).await,
        &format!("{realm},scope=\"registry:catalog:*\",error=\"insufficient_scope\""),
    )
    .await;
    // Anonymous tokens never get it.
    let anon = Creds::Bearer(s.token(&ANON, &["registry:catalog:*"]).await);
    expect_401(
        s.send(Method::GET, "/v2/_catalog", &anon).await,
        &format!("{realm},scope=\"registry:catalog:*\""),
    )
    .await;
}
