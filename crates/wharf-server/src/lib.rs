//! Wharf's HTTP front: the OCI Distribution API over axum.
//!
//! Handlers are thin: parse the request into OCI types, call `wharf_registry::Registry`,
//! turn the result into a response. Storage is never touched from here.

mod auth;
mod blobs;
mod conn;
mod discovery;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod manifests;
mod metrics;
pub mod mirrors;
pub mod tls;
pub mod webhooks;
mod wharf_ext;

use std::future::Future;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use futures_util::TryStreamExt;
use wharf_oci::{ErrorCode, NameError, Route, RouteError};
use wharf_registry::Registry;
use wharf_storage::BodyStream;

pub use conn::{BodyIdle, BodyTooSlow, Limits};
pub use error::ApiError;
pub use mirrors::{MirrorBoard, MirrorInfo, RunFailure, RunSummary};
pub use tls::{TlsConfig, TlsError};
/// Re-exported so that the binary configures authentication without another dependency.
pub use wharf_auth;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    metrics: std::sync::Arc<metrics::Metrics>,
    /// `None`: no `[auth]`, everything anonymous with full access.
    auth: Option<std::sync::Arc<wharf_auth::Authority>>,
    /// The registry's own mirrors (`[[mirrors]]`; empty without).
    mirrors: std::sync::Arc<MirrorBoard>,
}

pub type ApiResult = Result<Response, ApiError>;

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub const SPARSE_SUPPORT: HeaderName = HeaderName::from_static("x-sparse-manifest-support");
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The whole API as a router, without authentication.
pub fn router(registry: Registry) -> Router {
    router_with_auth(registry, None)
}

/// The whole API as a router; with `auth`, `/v2/` requests are authenticated and authorized
/// (see `auth.rs`) and `/token` issues tokens. `/metrics` and `/healthz` stay open.
pub fn router_with_auth(registry: Registry, auth: Option<wharf_auth::Authority>) -> Router {
    router_with_mirrors(registry, auth, Default::default())
}

/// [`router_with_auth`] that also shows and triggers the registry's mirrors (`mirrors`, whose
/// runs the caller schedules).
pub fn router_with_mirrors(
    registry: Registry,
    auth: Option<wharf_auth::Authority>,
    mirrors: std::sync::Arc<MirrorBoard>,
) -> Router {
    let auth = auth.map(std::sync::Arc::new);
    // The web UI for people (`wharf-ui`), under /ui/; `/` leads there.
    let ui = wharf_ui::router(registry.clone(), auth.clone(), mirrors.clone());
    Router::new()
        .route("/metrics", axum::routing::get(metrics_endpoint))
        .route("/healthz", axum::routing::get(health))
        .route("/token", axum::routing::get(auth::token_endpoint))
        .route("/", axum::routing::get(|| async { axum::response::Redirect::to("/ui/") }))
        .fallback(dispatch)
        .with_state(AppState { registry, metrics: Default::default(), auth, mirrors })
        .merge(ui)
}

/// Serve until `shutdown` resolves, then finish in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_auth(listener, registry, None, shutdown).await
}

/// [`serve`] with authentication (`None`: anonymous full access).
pub async fn serve_with_auth(
    listener: tokio::net::TcpListener,
    registry: Registry,
    auth: Option<wharf_auth::Authority>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_tls(listener, registry, auth, None, shutdown).await
}

/// [`serve_with_auth`], over TLS when `tls` is given (see `tls.rs`). Graceful shutdown is the
/// same either way: stop accepting, finish in-flight requests.
pub async fn serve_with_tls(
    listener: tokio::net::TcpListener,
    registry: Registry,
    auth: Option<wharf_auth::Authority>,
    tls: Option<TlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_mirrors(listener, registry, auth, tls, Default::default(), shutdown).await
}

/// [`serve_with_tls`] with the registry's mirrors board (see [`router_with_mirrors`]).
pub async fn serve_with_mirrors(
    listener: tokio::net::TcpListener,
    registry: Registry,
    auth: Option<wharf_auth::Authority>,
    tls: Option<TlsConfig>,
    mirrors: std::sync::Arc<MirrorBoard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limits(listener, registry, auth, tls, mirrors, Limits::default(), shutdown).await
}

/// [`serve_with_mirrors`] within `limits` (timeouts, connections, header size: `conn.rs`).
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    registry: Registry,
    auth: Option<wharf_auth::Authority>,
    tls: Option<TlsConfig>,
    mirrors: std::sync::Arc<MirrorBoard>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Webhook events queued in the outbox are delivered by this process for as long as it
    // serves (nothing runs without [[webhooks]]).
    let (stop_delivery, stopped) = tokio::sync::oneshot::channel();
    let settings = webhooks::DeliverySettings::default();
    let mut deliverer = AbortOnDrop(tokio::spawn(webhooks::deliver(registry.clone(), settings, stopped)));
    let router = router_with_mirrors(registry, auth, mirrors);
    let served = serve_router(listener, router, tls, limits, shutdown).await;
    // Stopping: the deliverer hands back what it claimed and did not finish (one statement
    // per event); bounded, since the database may be what is failing.
    let _ = stop_delivery.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut deliverer.0).await;
    served
}

/// Serve `router` on `listener`, over TLS when `tls` is given, until `shutdown`.
async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<TlsConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            // Headers and a small body are separate writes: without TCP_NODELAY, Nagle's
            // algorithm holds the second one until the client's delayed ACK (~40 ms) on every
            // kept-alive request for a config, a signature or a small layer.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            });
            conn::serve(listener, router, limits, shutdown).await
        }
        Some(tls) => {
            // Requests came over https: say so where the scheme of this server is advertised
            // (the default token realm), unless a proxy in front already did.
            let router = router.layer(axum::middleware::map_request(|mut req: Request| async move {
                let proto = HeaderName::from_static("x-forwarded-proto");
                if !req.headers().contains_key(&proto) {
                    req.headers_mut().insert(proto, HeaderValue::from_static("https"));
                }
                req
            }));
            let listener = tls::TlsListener::new(listener, &tls)?;
            conn::serve(listener, router, limits, shutdown).await
        }
    }
}

/// Ends a background task when the server it belongs to returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Routes are recognised by `wharf_oci::Route` (repository names contain slashes, which
/// path-template routers cannot express), then dispatched by method.
async fn dispatch(State(state): State<AppState>, mut req: Request) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let parsed = Route::parse(&path);
    let endpoint = metrics::endpoint(parsed.as_ref().ok());
    let result = match parsed {
        Ok(route) => match auth::authorize(&state, &route, &mut req).await {
            Ok(()) => handle(&state, route, req).await,
            Err(refused) => Ok(refused),
        },
        Err(RouteError::NotFound) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            format!("no endpoint at {path}"),
        )),
        // A reference that is not a valid tag names no manifest: pulling or deleting it is a
        // 404 like any unknown manifest (the conformance suite pulls ".INVALID_MANIFEST_NAME").
        Err(RouteError::Name(NameError::InvalidTag(tag)))
            if matches!(method, Method::GET | Method::HEAD | Method::DELETE) =>
        {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::ManifestUnknown,
                format!("manifest {tag:?} is unknown: it is not even a valid tag"),
            ))
        }
        Err(RouteError::Name(e)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, e.to_string()))
        }
        Err(RouteError::Digest(e)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, e.to_string()))
        }
    };
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    if method == Method::HEAD {
        // HEAD carries the headers of GET but never a body (errors included).
        *resp.body_mut() = Body::empty();
    }
    resp.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    state.metrics.record(endpoint, &method, &path, resp.status().as_u16(), started.elapsed());
    resp
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    let text = metrics::Scrape {
        metrics: state.metrics.clone(),
        mirrors: state.mirrors.clone(),
        webhooks: webhooks::Figures::read(&state.registry).await,
        auth: state.auth.clone(),
    }
    .render();
    ([("content-type", metrics::CONTENT_TYPE)], text).into_response()
}

/// Ready when the metadata database answers.
async fn health(State(state): State<AppState>) -> Response {
    if let Err(e) = state.registry.metadata().ping().await {
        tracing::warn!(error = %e, "health check: metadata database unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "metadata database unreachable\n").into_response();
    }
    if let Err(e) = state.registry.check_blob_store().await {
        tracing::warn!(error = %e, "health check: blob storage unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "blob storage unreachable\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn handle(state: &AppState, route: Route, req: Request) -> ApiResult {
    let reg = &state.registry;
    let method = req.method().clone();
    // Request bodies are not Sync: handlers that await get the URI, not `&Request`.
    let uri = req.uri().clone();
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(base(reg)),
        (Route::Catalog, Method::GET) => match req.extensions().get::<auth::CatalogFilter>() {
            Some(filter) => auth::catalog(reg, filter, &uri).await,
            None => discovery::catalog(reg, &uri).await,
        },
        (Route::Tags(repo), Method::GET) => discovery::tags(reg, &repo, &uri).await,
        (Route::Referrers(repo, digest), Method::GET) => {
            discovery::referrers(reg, &repo, &digest, &uri).await
        }
        (Route::Manifest(repo, r), Method::GET) => manifests::get(reg, &repo, &r, true).await,
        (Route::Manifest(repo, r), Method::HEAD) => manifests::get(reg, &repo, &r, false).await,
        (Route::Manifest(repo, r), Method::PUT) => manifests::put(reg, &repo, &r, req).await,
        (Route::Manifest(repo, r), Method::DELETE) => {
            // Request bodies are not Sync: read what the events need before awaiting.
            let origin = manifests::event_origin(&req);
            manifests::delete(reg, &repo, &r, origin).await
        }
        (Route::Blob(repo, d), Method::GET) => blobs::get(reg, &repo, &d, req.headers(), true).await,
        (Route::Blob(repo, d), Method::HEAD) => blobs::get(reg, &repo, &d, req.headers(), false).await,
        (Route::Blob(repo, d), Method::DELETE) => blobs::delete(reg, &repo, &d).await,
        (Route::UploadStart(repo), Method::POST) => blobs::start_upload(reg, &repo, req).await,
        (Route::Upload(repo, id), Method::GET) => blobs::upload_status(reg, &repo, &id).await,
        (Route::Upload(repo, id), Method::PATCH) => blobs::patch_upload(reg, &repo, &id, req).await,
        (Route::Upload(repo, id), Method::PUT) => blobs::finish_upload(reg, &repo, &id, req).await,
        (Route::Upload(repo, id), Method::DELETE) => blobs::cancel_upload(reg, &repo, &id).await,
        (Route::Extension(repo, rest), Method::GET) => wharf_ext::get(reg, &repo, &rest).await,
        (Route::RegistryExtension(rest), Method::GET) if rest == "mirrors" => {
            mirrors::list(&state.mirrors, req.extensions().get::<auth::CatalogFilter>())
        }
        (Route::RegistryExtension(rest), Method::POST) => mirrors::run(&state.mirrors, &rest),
        (Route::RegistryExtension(rest), Method::GET) => {
            wharf_ext::get_registry(reg, &rest, req.extensions().get::<auth::CatalogFilter>()).await
        }
        (route, method) => {
            Err(ApiError::unsupported(format!("{method} is not supported on {}", describe(&route))))
        }
    }
}

fn describe(route: &Route) -> &'static str {
    match route {
        Route::Base => "/v2/",
        Route::Catalog => "the catalog",
        Route::Tags(_) => "the tags list",
        Route::Manifest(..) => "manifests",
        Route::Blob(..) => "blobs",
        Route::UploadStart(_) | Route::Upload(..) => "blob uploads",
        Route::Referrers(..) => "referrers",
        Route::Extension(..) | Route::RegistryExtension(_) => "Wharf extensions",
    }
}

fn base(reg: &Registry) -> Response {
    let mut resp = (StatusCode::OK, [("content-type", "application/json")], "{}").into_response();
    let sparse = if reg.sparse_supported() { "true" } else { "false" };
    resp.headers_mut().insert(SPARSE_SUPPORT, HeaderValue::from_static(sparse));
    resp
}

/// A request body as the storage layer's stream type.
pub(crate) fn body_stream(body: Body) -> BodyStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

/// A header value from text we built (digests, paths, ranges: always visible ASCII).
pub(crate) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(crate) fn header_str(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Query parameters, percent-decoded.
pub(crate) fn query_params(uri: &Uri) -> Vec<(String, String)> {
    let q = uri.query().unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub(crate) fn query_param(uri: &Uri, key: &str) -> Option<String> {
    query_params(uri).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// `%XX` decoding. `+` stays a plus: media types such as `application/spdx+json`
/// arrive unencoded in `artifactType`.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Two hex digits exactly (`from_str_radix` alone would take `%+1`).
        let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (b[i], hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
