//! The registry's own mirrors (`[[mirrors]]`), as the HTTP layer sees them: a board of their
//! state that the handlers read and the scheduler (in the binary, which owns the sync engine)
//! writes. This crate never runs a mirror; it only shows them and passes "run now" on.
//!
//! - `GET /v2/_wharf/mirrors`: every mirror (with auth: those whose `dest` the caller may
//!   pull), its state, next run and last run.
//! - `POST /v2/_wharf/mirrors/<name>/run`: wake the mirror's scheduler now (with auth: push
//!   rights on `dest`). `202` whether it was idle or running: a request during a run queues
//!   exactly one more run after it (never two at once), so a run that starts after the
//!   request always follows it.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use serde_json::{Value, json};
use tokio::sync::Notify;
use wharf_oci::{ErrorCode, RepoName};

use crate::auth::CatalogFilter;
use crate::{ApiError, ApiResult};

pub const MIRRORS_TYPE: &str = "application/json";

/// What the board knows of a mirror from the config.
#[derive(Debug, Clone)]
pub struct MirrorInfo {
    pub name: String,
    /// The source repository as configured (`docker://HOST/REPO`).
    pub source: String,
    /// The repository of this registry the mirror writes.
    pub dest: RepoName,
}

/// One image that failed in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunFailure {
    pub image: String,
    pub error: String,
}

/// The outcome of one finished run.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub started: SystemTime,
    pub finished: SystemTime,
    pub ok: bool,
    pub images: u64,
    pub bytes_copied: u64,
    pub bytes_existing: u64,
    pub bytes_filtered: u64,
    pub failures: Vec<RunFailure>,
}

impl RunSummary {
    fn to_json(&self) -> Value {
        json!({
            "started": rfc3339(self.started),
            "finished": rfc3339(self.finished),
            "ok": self.ok,
            "images": self.images,
            "bytes_copied": self.bytes_copied,
            "bytes_existing": self.bytes_existing,
            "bytes_filtered": self.bytes_filtered,
            "failures": self
                .failures
                .iter()
                .map(|f| json!({ "image": f.image, "error": f.error }))
                .collect::<Vec<_>>(),
        })
    }
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    next_run: Option<SystemTime>,
    last_run: Option<RunSummary>,
    // Totals since start, for /metrics.
    runs_ok: u64,
    runs_failed: u64,
    skipped: u64,
    image_failures: u64,
    bytes_copied: u64,
    bytes_existing: u64,
    bytes_filtered: u64,
}

#[derive(Debug)]
struct Entry {
    info: MirrorInfo,
    state: Mutex<State>,
    wake: Notify,
}

/// The mirrors of this registry and their state. Fixed set (from the config), shared by the
/// handlers and the scheduler.
#[derive(Debug, Default)]
pub struct MirrorBoard {
    entries: Vec<Entry>,
}

impl MirrorBoard {
    pub fn new(mirrors: Vec<MirrorInfo>) -> MirrorBoard {
        MirrorBoard {
            entries: mirrors
                .into_iter()
                // Due at start: the scheduler runs every mirror as soon as it is up.
                .map(|info| {
                    let state = State { next_run: Some(SystemTime::now()), ..State::default() };
                    Entry { info, state: Mutex::new(state), wake: Notify::new() }
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.info.name == name)
    }

    fn with_state<T>(&self, name: &str, f: impl FnOnce(&mut State) -> T) -> Option<T> {
        let e = self.entry(name)?;
        let mut s = e.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(f(&mut s))
    }

    /// The repository a mirror writes (its authorization is push there).
    pub fn dest(&self, name: &str) -> Option<&RepoName> {
        self.entry(name).map(|e| &e.info.dest)
    }

    /// Ask for a run now. `None`: no such mirror; else whether one is running (the request
    /// then makes one more run follow it).
    pub fn request_run(&self, name: &str) -> Option<bool> {
        let e = self.entry(name)?;
        e.wake.notify_one();
        self.with_state(name, |s| s.running)
    }

    /// Wait until a run is asked for (a request made during a run is kept for after it).
    pub async fn requested(&self, name: &str) {
        match self.entry(name) {
            Some(e) => e.wake.notified().await,
            None => std::future::pending().await,
        }
    }

    pub fn set_next_run(&self, name: &str, at: SystemTime) {
        self.with_state(name, |s| s.next_run = Some(at));
    }

    pub fn run_started(&self, name: &str) {
        self.with_state(name, |s| s.running = true);
    }

    /// A run was not made because another replica holds the mirror's lock.
    pub fn run_skipped(&self, name: &str) {
        self.with_state(name, |s| {
            s.running = false;
            s.skipped += 1;
        });
    }

    pub fn run_finished(&self, name: &str, summary: RunSummary) {
        self.with_state(name, |s| {
            s.running = false;
            if summary.ok {
                s.runs_ok += 1;
            } else {
                s.runs_failed += 1;
            }
            s.image_failures += summary.failures.len() as u64;
            s.bytes_copied += summary.bytes_copied;
            s.bytes_existing += summary.bytes_existing;
            s.bytes_filtered += summary.bytes_filtered;
            s.last_run = Some(summary);
        });
    }

    /// The status document, listing the mirrors `visible` admits.
    pub fn status(&self, visible: impl Fn(&RepoName) -> bool) -> Value {
        let mirrors: Vec<Value> = self
            .entries
            .iter()
            .filter(|e| visible(&e.info.dest))
            .map(|e| {
                let s = e.state.lock().unwrap_or_else(|p| p.into_inner());
                json!({
                    "name": e.info.name,
                    "source": e.info.source,
                    "dest": e.info.dest.as_str(),
                    "state": if s.running { "running" } else { "idle" },
                    "next_run": s.next_run.map(rfc3339),
                    "last_run": s.last_run.as_ref().map(RunSummary::to_json),
                })
            })
            .collect();
        json!({ "mirrors": mirrors })
    }

    /// The runs since start, for `/metrics`.
    pub(crate) fn encode_metrics(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        if self.entries.is_empty() {
            return Ok(());
        }
        self.family(
            e,
            "wharf_mirror_runs",
            MetricType::Counter,
            "Mirror runs, by result (skipped: held by another replica).",
            |s| {
                vec![
                    (Some(("result", "ok")), s.runs_ok),
                    (Some(("result", "failed")), s.runs_failed),
                    (Some(("result", "skipped")), s.skipped),
                ]
            },
        )?;
        self.family(
            e,
            "wharf_mirror_image_failures",
            MetricType::Counter,
            "Images that failed in mirror runs.",
            |s| vec![(None, s.image_failures)],
        )?;
        self.family(
            e,
            "wharf_mirror_bytes",
            MetricType::Counter,
            "Bytes of mirror runs: copied, already there, left out by the platform filter.",
            |s| {
                vec![
                    (Some(("kind", "copied")), s.bytes_copied),
                    (Some(("kind", "existing")), s.bytes_existing),
                    (Some(("kind", "filtered")), s.bytes_filtered),
                ]
            },
        )?;
        self.family(e, "wharf_mirror_running", MetricType::Gauge, "1 while a mirror runs.", |s| {
            vec![(None, u64::from(s.running))]
        })
    }

    /// One metric family: a sample per mirror and extra label that `values` gives.
    fn family(
        &self,
        e: &mut DescriptorEncoder,
        name: &str,
        kind: MetricType,
        help: &str,
        values: impl Fn(&State) -> Vec<(Option<(&'static str, &'static str)>, u64)>,
    ) -> std::fmt::Result {
        let mut samples = Vec::new();
        for entry in &self.entries {
            let s = entry.state.lock().unwrap_or_else(|p| p.into_inner());
            for (extra, n) in values(&s) {
                let mut labels = vec![("mirror", entry.info.name.as_str())];
                labels.extend(extra);
                samples.push((labels, n));
            }
        }
        crate::metrics::family(e, name, help, kind, samples)
    }
}

/// The web UI's mirrors page reads the same board.
impl wharf_ui::Mirrors for MirrorBoard {
    fn statuses(&self) -> Vec<wharf_ui::MirrorStatus> {
        self.entries
            .iter()
            .map(|e| {
                let s = e.state.lock().unwrap_or_else(|p| p.into_inner());
                wharf_ui::MirrorStatus {
                    name: e.info.name.clone(),
                    source: e.info.source.clone(),
                    dest: e.info.dest.clone(),
                    running: s.running,
                    next_run: s.next_run.map(rfc3339),
                    last_run: s.last_run.as_ref().map(|r| wharf_ui::LastRun {
                        started: rfc3339(r.started),
                        finished: rfc3339(r.finished),
                        ok: r.ok,
                        images: r.images,
                        bytes_copied: r.bytes_copied,
                        bytes_existing: r.bytes_existing,
                        bytes_filtered: r.bytes_filtered,
                        failures: r.failures.iter().map(|f| (f.image.clone(), f.error.clone())).collect(),
                    }),
                }
            })
            .collect()
    }

    fn request_run(&self, name: &str) -> Option<bool> {
        MirrorBoard::request_run(self, name)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(t: SystemTime) -> String {
    wharf_auth::rfc3339(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// `GET /v2/_wharf/mirrors`.
pub(crate) fn list(board: &MirrorBoard, filter: Option<&CatalogFilter>) -> ApiResult {
    let doc = match filter {
        Some(f) => board.status(|r| f.may_pull(r)),
        None => board.status(|_| true),
    };
    let mut resp = (StatusCode::OK, doc.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MIRRORS_TYPE));
    Ok(resp)
}

/// The mirror name of `mirrors/<name>/run`.
pub(crate) fn run_target(rest: &str) -> Option<&str> {
    rest.strip_prefix("mirrors/")?.strip_suffix("/run").filter(|n| !n.is_empty() && !n.contains('/'))
}

/// `POST /v2/_wharf/mirrors/<name>/run`.
pub(crate) fn run(board: &MirrorBoard, rest: &str) -> ApiResult {
    let Some(name) = run_target(rest) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!(
                "no Wharf extension at POST /v2/_wharf/{rest}; known: POST /v2/_wharf/mirrors/<name>/run"
            ),
        ));
    };
    let Some(was_running) = board.request_run(name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            format!(
                "no mirror named {name:?} in this registry's [[mirrors]]; GET /v2/_wharf/mirrors lists them"
            ),
        ));
    };
    tracing::info!(mirror = name, was_running, "mirror run requested");
    let body = json!({ "name": name, "accepted": true, "already_running": was_running });
    let mut resp = (StatusCode::ACCEPTED, body.to_string()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MIRRORS_TYPE));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board() -> MirrorBoard {
        MirrorBoard::new(vec![MirrorInfo {
            name: "vendor-app".into(),
            source: "docker://r.example/team/app".into(),
            dest: "mirror/team/app".parse().unwrap(),
        }])
    }

    #[test]
    fn status_has_exactly_the_documented_fields() {
        let b = board();
        let doc = b.status(|_| true);
        assert_eq!(doc["mirrors"][0]["state"], "idle");
        assert_eq!(doc["mirrors"][0]["last_run"], Value::Null);
        b.set_next_run("vendor-app", UNIX_EPOCH);
        b.run_started("vendor-app");
        assert_eq!(b.status(|_| true)["mirrors"][0]["state"], "running");
        b.run_finished(
            "vendor-app",
            RunSummary {
                started: UNIX_EPOCH,
                finished: UNIX_EPOCH,
                ok: false,
                images: 2,
                bytes_copied: 10,
                bytes_existing: 5,
                bytes_filtered: 7,
                failures: vec![RunFailure {
                    image: "docker://r.example/team/app:v9".into(),
                    error: "gone".into(),
                }],
            },
        );
        let doc = b.status(|_| true);
        let m = &doc["mirrors"][0];
        let keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["dest", "last_run", "name", "next_run", "source", "state"]);
        assert_eq!(m["next_run"], "1970-01-01T00:00:00Z");
        assert_eq!(m["state"], "idle");
        let run = m["last_run"].as_object().unwrap();
        let keys: Vec<&str> = run.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "bytes_copied",
                "bytes_existing",
                "bytes_filtered",
                "failures",
                "finished",
                "images",
                "ok",
                "started"
            ]
        );
        assert_eq!(m["last_run"]["failures"][0]["error"], "gone");
        assert!(b.status(|_| false)["mirrors"].as_array().unwrap().is_empty());
        let metrics = crate::metrics::Scrape {
            metrics: Default::default(),
            mirrors: std::sync::Arc::new(b),
            webhooks: Default::default(),
            auth: None,
        }
        .render();
        assert!(
            metrics.contains("wharf_mirror_runs_total{mirror=\"vendor-app\",result=\"failed\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("wharf_mirror_bytes_total{mirror=\"vendor-app\",kind=\"copied\"} 10"),
            "{metrics}"
        );
        assert!(metrics.contains("wharf_mirror_image_failures_total{mirror=\"vendor-app\"} 1"), "{metrics}");
    }

    #[test]
    fn run_requests() {
        let b = board();
        assert_eq!(run_target("mirrors/vendor-app/run"), Some("vendor-app"));
        assert_eq!(run_target("mirrors//run"), None);
        assert_eq!(run_target("mirrors/a/b/run"), None);
        assert_eq!(b.request_run("vendor-app"), Some(false));
        assert_eq!(b.request_run("nope"), None);
        assert_eq!(run(&b, "mirrors/nope/run").unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(run(&b, "mirrors/vendor-app/run").unwrap().status(), StatusCode::ACCEPTED);
    }
}
