//! The web UI of `wharf serve`, under `/ui/`: what is mirrored, for people.
//!
//! | path | page |
//! | --- | --- |
//! | `/ui/` | repositories: search, paging, tag count, stored bytes, sparse or not |
//! | `/ui/repo/<name>` | its tags, newest first: kind, platforms present of listed, size, digest |
//! | `/ui/repo/<name>/manifest/<tag or digest>` | an index (every platform present or absent, referrers, pull commands, bytes stored against the full index) or an image (config, layers, referrers) |
//! | `/ui/mirrors` | the registry's `[[mirrors]]`, their state and a run-now button |
//! | `/ui/storage` | the storage report |
//! | `/ui/login`, `/ui/logout` | htpasswd login into a signed session cookie |
//!
//! Server-rendered with maud; the stylesheet and the few lines of script for copy buttons are
//! embedded in the binary (no external URL anywhere). Reads go through `wharf-registry`'s
//! operations; permissions through `wharf-auth`'s `Authority`, as the API applies them:
//! a visitor sees a repository (its name, tags, counts, digests) only if they may pull it,
//! and anonymous visitors see what `"*"` may pull.

mod format;
mod layout;
mod pages;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use wharf_auth::{Action, Authority, Identity};
use wharf_oci::RepoName;
use wharf_registry::Registry;

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// One mirror of the server config as the mirrors page shows it.
#[derive(Debug, Clone)]
pub struct MirrorStatus {
    pub name: String,
    pub source: String,
    pub dest: RepoName,
    pub running: bool,
    /// RFC 3339.
    pub next_run: Option<String>,
    pub last_run: Option<LastRun>,
}

/// The outcome of a mirror's last run.
#[derive(Debug, Clone)]
pub struct LastRun {
    pub started: String,
    pub finished: String,
    pub ok: bool,
    pub images: u64,
    pub bytes_copied: u64,
    pub bytes_existing: u64,
    pub bytes_filtered: u64,
    /// (image, error)
    pub failures: Vec<(String, String)>,
}

/// The registry's mirrors, as the server knows them (its mirrors board); the UI only shows
/// them and asks for runs.
pub trait Mirrors: Send + Sync {
    fn statuses(&self) -> Vec<MirrorStatus>;
    /// Ask for a run of `name` now; `None` when there is no such mirror.
    fn request_run(&self, name: &str) -> Option<bool>;
}

/// No mirrors configured.
pub struct NoMirrors;

impl Mirrors for NoMirrors {
    fn statuses(&self) -> Vec<MirrorStatus> {
        Vec::new()
    }
    fn request_run(&self, _name: &str) -> Option<bool> {
        None
    }
}

#[derive(Clone)]
pub(crate) struct UiState {
    pub(crate) registry: Registry,
    /// `None`: no `[auth]`, everyone sees everything (as the API allows).
    pub(crate) auth: Option<Arc<Authority>>,
    pub(crate) mirrors: Arc<dyn Mirrors>,
    pub(crate) keys: Arc<session::Keys>,
}

/// The UI's routes (all under `/ui`), to merge into the server's router.
pub fn router(registry: Registry, auth: Option<Arc<Authority>>, mirrors: Arc<dyn Mirrors>) -> Router {
    let keys = Arc::new(session::Keys::new(auth.as_deref()));
    let state = UiState { registry, auth, mirrors, keys };
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(pages::repositories))
        .route("/ui/repo/{*rest}", get(pages::repository_or_manifest))
        .route("/ui/mirrors", get(pages::mirrors))
        .route("/ui/mirrors/run", post(pages::run_mirror))
        .route("/ui/storage", get(pages::storage))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/assets/ui.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/ui/assets/ui.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/ui/{*rest}", get(pages::not_found))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Visitor {
    /// No `[auth]`: everything is open.
    Open,
    Anonymous,
    User(String),
}

/// What every page knows about its request.
pub(crate) struct Ctx {
    pub(crate) visitor: Visitor,
    auth: Option<Arc<Authority>>,
    /// The CSRF field of this page's forms.
    pub(crate) csrf: String,
    /// A CSRF cookie to set with this page (the visitor had none).
    new_csrf_cookie: Option<String>,
    /// `Host` of the request, for pull commands.
    pub(crate) host: String,
    headers: HeaderMap,
}

impl Ctx {
    pub(crate) fn new(state: &UiState, headers: &HeaderMap) -> Ctx {
        let visitor = match &state.auth {
            None => Visitor::Open,
            Some(_) => session::cookie(headers, session::SESSION_COOKIE)
                .and_then(|v| state.keys.session_user(v, wharf_auth::now_secs()))
                .map_or(Visitor::Anonymous, Visitor::User),
        };
        let (cookie, new_csrf_cookie) = match session::cookie(headers, session::CSRF_COOKIE) {
            Some(c) if !c.is_empty() => (c.to_owned(), None),
            _ => {
                let c = session::new_csrf_value();
                (c.clone(), Some(c))
            }
        };
        Ctx {
            visitor,
            auth: state.auth.clone(),
            csrf: state.keys.csrf_token(&cookie),
            new_csrf_cookie,
            host: request_host(headers).to_owned(),
            headers: headers.clone(),
        }
    }

    fn may(&self, repo: &RepoName, action: Action) -> bool {
        let Some(auth) = &self.auth else { return true };
        let id = match &self.visitor {
            Visitor::User(u) => Identity::User(u.clone()),
            _ => Identity::Anonymous,
        };
        auth.actions_for(&id, repo).contains(action)
    }

    pub(crate) fn may_pull(&self, repo: &RepoName) -> bool {
        self.may(repo, Action::Pull)
    }

    pub(crate) fn may_push(&self, repo: &RepoName) -> bool {
        self.may(repo, Action::Push)
    }

    /// A full page: the layout around `body`, with the headers every page carries.
    pub(crate) fn page(&self, status: StatusCode, title: &str, body: maud::Markup) -> Response {
        let html = layout::page(self, title, body);
        let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html.into_string())
            .into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
        h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
        h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        if let Some(c) = &self.new_csrf_cookie {
            h.append(
                header::SET_COOKIE,
                session::set_cookie(&self.headers, session::CSRF_COOKIE, c, 86_400 * 30),
            );
        }
        resp
    }
}

/// `Host` of the request if it is a plain host[:port] (it ends up in pull commands).
fn request_host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b)))
        .unwrap_or("localhost")
}
