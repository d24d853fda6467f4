//! Authentication and authorization at the HTTP edge (only when `[auth]` is configured).
//!
//! Every `/v2/` request is authenticated (basic auth against the htpasswd file, or a bearer
//! token of the built-in issuer), then authorized by the action its route needs:
//!
//! | route | action |
//! | --- | --- |
//! | `GET`/`HEAD` manifests, blobs, tags, referrers, `_wharf` | pull |
//! | `PUT` manifests, every upload request (`POST`, `PATCH`, `PUT`, `GET`, `DELETE`) | push |
//! | `DELETE` manifests and blobs | delete |
//! | `GET /v2/` | any valid credentials |
//! | `GET /v2/_catalog` | a logged-in user (`registry:catalog:*` in token mode); lists only what it may pull |
//! | `GET /v2/_wharf/storage`, `GET /v2/_wharf/mirrors` (registry-wide extensions) | what the catalog needs; reports only what it may pull |
//! | `POST /v2/_wharf/mirrors/<name>/run` | push on the mirror's `dest` |
//!
//! A mount (`POST ?mount=&from=`) also needs pull on `from`; without it (or without `from`)
//! the mount is not attempted and the client gets an upload session instead, as the spec
//! allows. Refusals: 401 with a `WWW-Authenticate` challenge when credentials are missing or
//! wrong (or a token lacks a scope the rules would grant), 403 `DENIED` when a user who
//! proved who they are is not allowed, 503 `UNAVAILABLE` when the LDAP directory cannot
//! check a password (down or slow). `/healthz` and `/metrics` are not behind auth.
//!
//! Password logins go through `Authority::password_login`: failures are throttled per client
//! address and per user name (`429 TOOMANYREQUESTS` with `Retry-After`, before any bcrypt),
//! and bcrypt checks are capped (`503 UNAVAILABLE` with `Retry-After` when none frees up
//! soon), so `/healthz` and token requests never queue behind them. A user name is a
//! client's string: it reaches a log line only `Debug`-escaped (no forged lines).
//!
//! `/v2/` answers 401 to a request without credentials even when some repositories are
//! public: clients (containers/image, docker) learn the auth scheme from that answer only,
//! and would otherwise never send credentials. Anonymous clients then pull public
//! repositories with an anonymous token, or with empty basic credentials.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use wharf_auth::{Action, Authority, Claims, Identity, LoginError, Scope};
use wharf_oci::{ErrorCode, RepoName, Route};
use wharf_registry::Registry;

use crate::{ApiError, ApiResult, AppState, discovery, percent_decode, query_params};

/// The realm of basic-auth challenges.
const BASIC_REALM: &str = "wharf";

/// Who made a request, as far as its credentials prove.
#[derive(Debug, Clone)]
enum Caller {
    Anonymous,
    /// Basic auth with a correct password: [`Identity::User`] or [`Identity::Member`].
    User(Identity),
    /// A valid bearer token of this server.
    Token(Box<Claims>),
    /// This process itself (a mirror run pushing over loopback).
    Internal,
}

impl Caller {
    fn identity(&self) -> Identity {
        match self {
            Caller::Anonymous => Identity::Anonymous,
            Caller::User(id) => id.clone(),
            Caller::Token(c) => c.identity(),
            Caller::Internal => Identity::Internal,
        }
    }

    /// A token allows what it grants; basic auth and anonymous requests what the rules say.
    fn may(&self, auth: &Authority, repo: &RepoName, action: Action) -> bool {
        match self {
            Caller::Token(c) => c.permits("repository", repo.as_str(), action.as_str()),
            other => auth.actions_for(&other.identity(), repo).contains(action),
        }
    }
}

/// Set by [`authorize`] on catalog requests and registry-wide extensions: list only what
/// this identity may pull.
#[derive(Clone)]
pub(crate) struct CatalogFilter {
    auth: Arc<Authority>,
    identity: Identity,
}

impl CatalogFilter {
    /// May the caller pull `repo`? (By the rules for its identity, as the catalog decides.)
    pub(crate) fn may_pull(&self, repo: &RepoName) -> bool {
        self.auth.actions_for(&self.identity, repo).contains(Action::Pull)
    }
}

/// What the `Authorization` header carries.
enum Presented {
    Nothing,
    Basic(String, String),
    Bearer(String),
    Invalid,
}

fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Presented::Nothing };
    let Ok(value) = value.to_str() else { return Presented::Invalid };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        match wharf_auth::parse_basic(rest) {
            // containers/image sends empty basic credentials when it has none.
            Some((u, p)) if u.is_empty() && p.is_empty() => Presented::Nothing,
            Some((u, p)) => Presented::Basic(u, p),
            None => Presented::Invalid,
        }
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty() {
        Presented::Bearer(rest.trim().to_owned())
    } else {
        Presented::Invalid
    }
}

/// The kind of [`presented`] credentials, for the fuzz target.
pub(crate) fn presented_kind(headers: &HeaderMap) -> &'static str {
    match presented(headers) {
        Presented::Nothing => "nothing",
        Presented::Basic(..) => "basic",
        Presented::Bearer(_) => "bearer",
        Presented::Invalid => "invalid",
    }
}

/// The address the request came from: the TCP peer, or the client a trusted proxy names in
/// `X-Forwarded-For` (`[auth] trusted_proxies`). The login throttle counts by it.
fn client_ip(auth: &Authority, req: &Request) -> IpAddr {
    let ext = req.extensions();
    // Set by `conn.rs` for every connection, plain or TLS.
    let peer = ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let forwarded = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok());
    wharf_auth::throttle::client_address(peer, forwarded, auth.login_limits())
}

/// Check a password (throttled, capped; see `Authority::password_login`). Failures are
/// logged with the user name escaped, never the password.
async fn login(
    auth: &Arc<Authority>,
    client: IpAddr,
    user: String,
    password: String,
) -> Result<Identity, LoginError> {
    let name = user.clone();
    let outcome = auth.password_login(client, user, password).await;
    match &outcome {
        Ok(_) => {}
        Err(LoginError::Invalid) => {
            tracing::info!(user = ?name, %client, "failed login: unknown user or wrong password");
        }
        Err(e @ LoginError::Directory(_)) => {
            tracing::warn!(user = ?name, %client, error = %e, "login not checked: LDAP directory unavailable (503)");
        }
        Err(e) => tracing::debug!(user = ?name, %client, error = %e, "login refused before checking"),
    }
    outcome
}

/// Why authentication failed: a 401 with a challenge, or a login refused for now.
enum AuthFailure {
    Unauthorized(String),
    Refused(LoginError),
}

/// `429` (throttled) or `503` (busy, or the directory cannot answer) in the spec's error
/// format, with `Retry-After`.
fn login_refused(e: LoginError) -> Response {
    let (status, code) = match e {
        LoginError::Busy | LoginError::Directory(_) => {
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        }
        _ => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests),
    };
    let mut resp = ApiError::new(status, code, e.to_string()).into_response();
    let secs = e.retry_after().map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

async fn authenticate(
    auth: &Arc<Authority>,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Caller, AuthFailure> {
    match presented(headers) {
        Presented::Nothing => Ok(Caller::Anonymous),
        Presented::Basic(user, password) => match login(auth, client, user, password).await {
            Ok(id @ (Identity::User(_) | Identity::Member { .. })) => Ok(Caller::User(id)),
            Ok(Identity::Anonymous) => Ok(Caller::Anonymous),
            Ok(Identity::Internal) => Ok(Caller::Internal),
            Err(LoginError::Invalid) => {
                Err(AuthFailure::Unauthorized("invalid user name or password".into()))
            }
            Err(e) => Err(AuthFailure::Refused(e)),
        },
        Presented::Bearer(token) => {
            if auth.token_settings().is_none() {
                return Err(AuthFailure::Unauthorized(
                    "this registry takes basic auth, not bearer tokens".into(),
                ));
            }
            auth.verify_token(&token).map(|c| Caller::Token(Box::new(c))).map_err(|e| {
                tracing::debug!(error = %e, "bearer token refused");
                AuthFailure::Unauthorized(format!("{e}; get a new one from the token endpoint"))
            })
        }
        Presented::Invalid => Err(AuthFailure::Unauthorized(
            "the Authorization header is neither valid Basic nor Bearer".into(),
        )),
    }
}

/// `Host` of the request, if it is a plain host[:port] (it ends up inside a quoted header).
fn request_host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b)))
        .unwrap_or("localhost")
}

fn challenge(auth: &Authority, headers: &HeaderMap, scope: Option<&str>, insufficient: bool) -> HeaderValue {
    let value = match auth.token_settings() {
        None => format!("Basic realm=\"{BASIC_REALM}\""),
        Some(t) => {
            let realm = match &t.realm {
                Some(r) => r.clone(),
                None => {
                    let https = headers
                        .get("x-forwarded-proto")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
                    format!("{}://{}/token", if https { "https" } else { "http" }, request_host(headers))
                }
            };
            let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", t.service);
            if let Some(s) = scope {
                v.push_str(&format!(",scope=\"{s}\""));
            }
            if insufficient {
                v.push_str(",error=\"insufficient_scope\"");
            }
            v
        }
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"wharf\""))
}

fn unauthorized(
    auth: &Authority,
    headers: &HeaderMap,
    scope: Option<&str>,
    insufficient: bool,
    message: String,
) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge(auth, headers, scope, insufficient));
    resp
}

/// The refusal for a caller who may not do something: a token that lacks a scope the rules
/// would grant gets a challenge for it; anonymous callers are asked to log in; users who
/// did are denied.
fn refuse(
    auth: &Authority,
    headers: &HeaderMap,
    caller: &Caller,
    scope: &str,
    rules_allow: bool,
    what: String,
) -> Response {
    match caller {
        Caller::Token(_) if rules_allow => unauthorized(
            auth,
            headers,
            Some(scope),
            true,
            format!("the token does not grant {scope}: get a token for that scope"),
        ),
        c if c.identity().is_anonymous() => {
            unauthorized(auth, headers, Some(scope), false, format!("authentication required to {what}"))
        }
        c => ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Denied,
            format!("{} may not {what}", c.identity()),
        )
        .into_response(),
    }
}

/// The action a repository route needs.
fn needed_action(route: &Route, method: &Method) -> Action {
    match (route, method) {
        (Route::UploadStart(_) | Route::Upload(..), _) => Action::Push,
        (_, &Method::GET | &Method::HEAD) => Action::Pull,
        (Route::Manifest(..) | Route::Blob(..), &Method::DELETE) => Action::Delete,
        _ => Action::Push,
    }
}

/// The scope a challenge asks for: what docker and containers/image ask for themselves.
fn challenge_scope(repo: &RepoName, action: Action) -> String {
    let actions = match action {
        Action::Pull => "pull",
        Action::Push => "pull,push",
        Action::Delete => "delete",
    };
    format!("repository:{repo}:{actions}")
}

/// Authenticate and authorize a parsed `/v2/` request; `Err` is the refusal to send.
/// Catalog requests get a [`CatalogFilter`]; mounts the caller may not read from become
/// plain upload requests.
pub(crate) async fn authorize(state: &AppState, route: &Route, req: &mut Request) -> Result<(), Response> {
    let Some(auth) = &state.auth else { return Ok(()) };
    let client = client_ip(auth, req);
    let headers = req.headers();
    let caller = match authenticate(auth, headers, client).await {
        Ok(c) => c,
        Err(AuthFailure::Refused(e)) => return Err(login_refused(e)),
        Err(AuthFailure::Unauthorized(why)) => {
            let scope = route.repo().map(|r| challenge_scope(r, needed_action(route, req.method())));
            return Err(unauthorized(auth, headers, scope.as_deref(), false, why));
        }
    };
    let repo = match route {
        Route::Base => {
            return match caller {
                Caller::Anonymous => Err(unauthorized(
                    auth,
                    headers,
                    None,
                    false,
                    "authentication required: log in to this registry".into(),
                )),
                _ => Ok(()),
            };
        }
        // Running a mirror needs push on its destination. An unknown name (404 from the
        // handler) is told only to a caller who logged in.
        Route::RegistryExtension(rest) if req.method() == Method::POST => {
            match crate::mirrors::run_target(rest).and_then(|n| state.mirrors.dest(n)) {
                Some(dest) => dest,
                None if caller.identity().is_anonymous() => {
                    return Err(unauthorized(
                        auth,
                        headers,
                        None,
                        false,
                        "authentication required: log in to run a mirror".into(),
                    ));
                }
                None => return Ok(()),
            }
        }
        // Registry-wide extensions (the storage report, the mirrors) list repositories like
        // the catalog, need what it needs, and show only what the caller may pull.
        Route::Catalog | Route::RegistryExtension(_) => {
            let identity = caller.identity();
            let allowed = match &caller {
                Caller::Token(c) => c.permits("registry", "catalog", "*"),
                _ => auth.may_list_catalog(&identity),
            };
            if !allowed {
                let scope = Scope::catalog().to_string();
                let rules_allow = auth.may_list_catalog(&identity);
                let what = match route {
                    Route::Catalog => "list the catalog",
                    Route::RegistryExtension(r) if r == "mirrors" => "list the mirrors",
                    _ => "read the storage report",
                };
                return Err(refuse(auth, headers, &caller, &scope, rules_allow, what.into()));
            }
            req.extensions_mut().insert(CatalogFilter { auth: auth.clone(), identity });
            return Ok(());
        }
        other => match other.repo() {
            Some(r) => r,
            None => return Ok(()),
        },
    };
    let action = needed_action(route, req.method());
    if !caller.may(auth, repo, action) {
        let rules_allow = auth.actions_for(&caller.identity(), repo).contains(action);
        let scope = challenge_scope(repo, action);
        return Err(refuse(auth, headers, &caller, &scope, rules_allow, format!("{action} {repo}")));
    }
    // Who pushed or deleted, for the webhook events of the handler.
    let actor = match caller.identity() {
        Identity::User(u) | Identity::Member { user: u, .. } => Some(u),
        Identity::Internal => Some("wharf".to_owned()),
        Identity::Anonymous => None,
    };
    if let Some(name) = actor {
        req.extensions_mut().insert(EventActor(name));
    }
    if matches!(route, Route::UploadStart(_)) && req.method() == Method::POST {
        let params = query_params(req.uri());
        if params.iter().any(|(k, _)| k == "mount") {
            let from = params.iter().find(|(k, _)| k == "from").and_then(|(_, v)| v.parse::<RepoName>().ok());
            if !from.is_some_and(|f| caller.may(auth, &f, Action::Pull)) {
                tracing::debug!(%repo, "mount source not readable by the caller: opening an upload instead");
                drop_mount(req);
            }
        }
    }
    Ok(())
}

/// The authenticated user of a repository request (webhook events' `actor`).
#[derive(Clone, Debug)]
pub(crate) struct EventActor(pub String);

/// Remove `mount` and `from` from the query: the request opens an upload session.
fn drop_mount(req: &mut Request) {
    let uri = req.uri();
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| {
            let key = percent_decode(pair.split_once('=').map_or(*pair, |(k, _)| k));
            !pair.is_empty() && key != "mount" && key != "from"
        })
        .collect();
    let path = uri.path();
    let rebuilt = if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
    if let Ok(new) = rebuilt.parse::<Uri>() {
        *req.uri_mut() = new;
    }
}

/// `GET /v2/_catalog` listing only the repositories the caller may pull, paginated over the
/// filtered list.
pub(crate) async fn catalog(reg: &Registry, filter: &CatalogFilter, uri: &Uri) -> ApiResult {
    let (n, last) = discovery::paging(uri)?;
    let mut repos = Vec::new();
    if n != Some(0) {
        let batch = n.unwrap_or(1000).clamp(100, 1000);
        let mut cursor = last;
        'pages: loop {
            let page = reg.catalog(Some(batch), cursor.as_deref()).await?;
            let exhausted = page.len() < batch as usize;
            for name in page {
                cursor = Some(name.clone());
                let readable = name.parse::<RepoName>().is_ok_and(|r| filter.may_pull(&r));
                if readable {
                    repos.push(name);
                    if n.is_some_and(|n| repos.len() >= n as usize) {
                        break 'pages;
                    }
                }
            }
            if exhausted {
                break;
            }
        }
    }
    let body = serde_json::json!({ "repositories": repos });
    Ok(discovery::listing(body, &repos, n, "/v2/_catalog"))
}

/// Password-login counters for `/metrics` (counts only: no name, no secret).
pub(crate) fn encode_metrics(
    auth: &Authority,
    e: &mut prometheus_client::encoding::DescriptorEncoder,
) -> std::fmt::Result {
    use prometheus_client::metrics::MetricType::{Counter, Gauge};
    use std::sync::atomic::Ordering::Relaxed;

    use crate::metrics::family;
    let s = auth.login_stats();
    let n = |v: &std::sync::atomic::AtomicU64| v.load(Relaxed);
    family(
        e,
        "wharf_auth_logins_failed",
        "Password logins refused after a check.",
        Counter,
        [(vec![], n(&s.failed))],
    )?;
    family(
        e,
        "wharf_auth_logins_throttled",
        "Password logins refused before a check: too many recent failures (by client or user), or all checks busy.",
        Counter,
        [
            (vec![("reason", "client")], n(&s.throttled_client)),
            (vec![("reason", "user")], n(&s.throttled_user)),
            (vec![("reason", "busy")], n(&s.busy)),
        ],
    )?;
    family(
        e,
        "wharf_auth_password_checks_running",
        "bcrypt checks running now.",
        Gauge,
        [(vec![], s.running.load(Relaxed) as u64)],
    )?;
    family(
        e,
        "wharf_auth_password_checks_peak",
        "The most bcrypt checks ever running at once.",
        Gauge,
        [(vec![], s.peak.load(Relaxed) as u64)],
    )
}

/// A 401 from the token endpoint: it takes basic auth.
fn token_unauthorized(message: &str) -> Response {
    let mut resp =
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message.to_owned()).into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"wharf\""));
    resp
}

/// `GET /token?service=…&scope=…[&scope=…]`: the built-in token issuer. Basic auth or
/// anonymous; grants the intersection of the asked scopes with what the rules allow.
pub(crate) async fn token_endpoint(State(state): State<AppState>, req: Request) -> Response {
    let Some(auth) = state.auth.as_ref().filter(|a| a.token_settings().is_some_and(|t| t.builtin_issuer))
    else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "this registry issues no tokens: token authentication is not configured",
        )
        .into_response();
    };
    let service = auth.token_settings().map(|t| t.service.clone()).unwrap_or_default();
    let params = query_params(req.uri());
    if let Some((_, asked)) = params.iter().find(|(k, _)| k == "service")
        && !asked.is_empty()
        && *asked != service
    {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported,
            format!("this token endpoint issues tokens for service {service:?}, not {asked:?}"),
        )
        .into_response();
    }
    let mut requested = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "scope") {
        // Form encoding (Go's url.Values, reqwest) sends spaces as `+`, which no scope contains.
        match Scope::parse_list(&v.replace('+', " ")) {
            Ok(s) => requested.extend(s),
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Unsupported, e.to_string())
                    .into_response();
            }
        }
    }
    let identity = match presented(req.headers()) {
        Presented::Nothing => Identity::Anonymous,
        Presented::Basic(user, password) => match login(auth, client_ip(auth, &req), user, password).await {
            Ok(id) => id,
            Err(LoginError::Invalid) => return token_unauthorized("invalid user name or password"),
            Err(e) => return login_refused(e),
        },
        Presented::Bearer(_) | Presented::Invalid => {
            return token_unauthorized(
                "the token endpoint takes basic auth (user name and password) or none",
            );
        }
    };
    let Some(issued) = auth.issue(&identity, &requested) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    tracing::debug!(
        %identity,
        asked = %requested.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        granted = %issued.claims.access.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
        "issued a token"
    );
    let body = serde_json::json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    });
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
