//! Webhook notifications (`[[webhooks]]`): which webhooks want an event, and the event itself
//! in the shape of distribution's notifications, so that consumers written for distribution
//! read Wharf's unchanged.
//!
//! This layer only *queues*: a push or delete writes one outbox row per interested webhook in
//! its own metadata transaction (`MetadataStore::put_manifest_with_events`), and never waits
//! for a receiver. Delivery (HTTP, signatures, retries) is the server's job
//! (`wharf-server/src/webhooks.rs`), which reads the webhooks back through
//! [`crate::Registry::webhook`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use wharf_metadata::NewEvent;
use wharf_oci::{Digest, RepoName};

use crate::policy::RepoPattern;

/// Content type of a notification body (distribution's).
pub const ENVELOPE_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// What a webhook may ask to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Push,
    Delete,
    MirrorRun,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Push => "push",
            EventKind::Delete => "delete",
            EventKind::MirrorRun => "mirror_run",
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "push" => Ok(EventKind::Push),
            "delete" => Ok(EventKind::Delete),
            "mirror_run" => Ok(EventKind::MirrorRun),
            other => Err(format!("event {other:?} is unknown: use \"push\", \"delete\" or \"mirror_run\"")),
        }
    }
}

/// One `[[webhooks]]` entry.
#[derive(Clone)]
pub struct Webhook {
    /// Where events are POSTed; also the webhook's identity in the outbox.
    pub url: String,
    pub events: Vec<EventKind>,
    /// Key of the `X-Wharf-Signature-256` HMAC; `None`: unsigned.
    pub secret: Option<String>,
    /// Only repositories matching it (for `mirror_run`: the mirror's `dest`); `None`: all.
    pub pattern: Option<RepoPattern>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("pattern", &self.pattern)
            .finish()
    }
}

impl Webhook {
    pub fn wants(&self, kind: EventKind, repo: &RepoName) -> bool {
        self.events.contains(&kind) && self.pattern.as_ref().is_none_or(|p| p.matches(repo))
    }
}

/// Who made a change and how, as the HTTP layer saw it (the envelope's `request` and `actor`).
#[derive(Debug, Clone, Default)]
pub struct EventOrigin {
    /// The authenticated user; `None`: anonymous.
    pub actor: Option<String>,
    /// The client's address.
    pub addr: Option<String>,
    /// The `Host` the client asked for (also used for the target's `url`).
    pub host: Option<String>,
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub method: String,
    pub useragent: Option<String>,
}

/// Deliveries since start, for `/metrics` (the server's deliverer counts them).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
}

impl WebhookStats {
    pub fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the event is about.
pub(crate) struct ManifestTarget<'a> {
    pub repo: &'a RepoName,
    pub digest: &'a Digest,
    pub media_type: &'a str,
    pub size: u64,
    pub tag: Option<&'a str>,
}

/// Facts about the instance that go into every event's `source`.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub addr: String,
    pub instance_id: String,
}

impl Source {
    pub(crate) fn new() -> Source {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "wharf".into());
        Source { addr: host, instance_id: uuid::Uuid::new_v4().to_string() }
    }
}

/// A manifest event (`push` or `delete`) as distribution writes it.
pub(crate) fn manifest_event(
    kind: EventKind,
    target: &ManifestTarget<'_>,
    origin: &EventOrigin,
    source: &Source,
) -> Value {
    let mut t = json!({
        "repository": target.repo.as_str(),
        "digest": target.digest.to_string(),
    });
    if kind == EventKind::Push {
        t["mediaType"] = json!(target.media_type);
        t["size"] = json!(target.size);
        t["length"] = json!(target.size);
    }
    if let Some(host) = &origin.host {
        let scheme = origin.scheme.as_deref().unwrap_or("http");
        t["url"] = json!(format!("{scheme}://{host}/v2/{}/manifests/{}", target.repo, target.digest));
    }
    if let Some(tag) = target.tag {
        t["tag"] = json!(tag);
    }
    envelope_entry(kind, t, origin, source)
}

/// A `mirror_run` event: Wharf's own, under the same envelope. `target` names the mirror and
/// its `dest` repository; `run` is the run's summary as `GET /v2/_wharf/mirrors` shows it.
pub(crate) fn mirror_run_event(name: &str, dest: &RepoName, run: Value, source: &Source) -> Value {
    let target = json!({ "mirror": name, "repository": dest.as_str(), "run": run });
    let origin = EventOrigin { actor: Some("wharf".into()), method: "POST".into(), ..Default::default() };
    envelope_entry(EventKind::MirrorRun, target, &origin, source)
}

fn envelope_entry(kind: EventKind, target: Value, origin: &EventOrigin, source: &Source) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    let mut request = json!({ "id": id, "method": origin.method });
    for (key, value) in [("addr", &origin.addr), ("host", &origin.host), ("useragent", &origin.useragent)] {
        if let Some(v) = value {
            request[key] = json!(v);
        }
    }
    json!({
        "id": id,
        "timestamp": rfc3339_millis(SystemTime::now()),
        "action": kind.as_str(),
        "target": target,
        "request": request,
        "actor": { "name": origin.actor.clone().unwrap_or_default() },
        "source": { "addr": source.addr, "instanceID": source.instance_id },
    })
}

/// One outbox row per webhook that wants `kind` in `repo`.
pub(crate) fn for_webhooks(
    webhooks: &[Webhook],
    kind: EventKind,
    repo: &RepoName,
    event: impl FnOnce() -> Value,
) -> Vec<NewEvent> {
    let wanted: Vec<&Webhook> = webhooks.iter().filter(|w| w.wants(kind, repo)).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let body = event().to_string();
    wanted
        .into_iter()
        .map(|w| NewEvent { target: w.url.clone(), kind: kind.as_str().into(), body: body.clone() })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = rfc3339(d.as_secs());
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), d.subsec_millis())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339_millis(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn webhooks_filter_by_event_and_pattern() {
        let hook = |events: Vec<EventKind>, pattern: Option<&str>| Webhook {
            url: "http://127.0.0.1:1/h".into(),
            events,
            secret: Some("s".into()),
            pattern: pattern.map(RepoPattern::new),
        };
        let prod: RepoName = "prod/app".parse().unwrap();
        let dev: RepoName = "dev/app".parse().unwrap();
        assert!(hook(vec![EventKind::Push], Some("prod/**")).wants(EventKind::Push, &prod));
        assert!(!hook(vec![EventKind::Push], Some("prod/**")).wants(EventKind::Push, &dev));
        assert!(!hook(vec![EventKind::Push], None).wants(EventKind::Delete, &prod));
        assert!(!format!("{:?}", hook(vec![], None)).contains("\"s\""));
        let hooks = [hook(vec![EventKind::Push], None), hook(vec![EventKind::Delete], None)];
        let rows = for_webhooks(&hooks, EventKind::Push, &prod, || json!({"a": 1}));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "push");
    }

    #[test]
    fn push_event_has_distribution_fields() {
        let repo: RepoName = "prod/app".parse().unwrap();
        let digest = Digest::sha256_of(b"m");
        let target = ManifestTarget {
            repo: &repo,
            digest: &digest,
            media_type: "application/vnd.oci.image.manifest.v1+json",
            size: 1,
            tag: Some("v1"),
        };
        let origin = EventOrigin {
            actor: Some("ci".into()),
            host: Some("reg.example".into()),
            method: "PUT".into(),
            ..Default::default()
        };
        let source = Source { addr: "h".into(), instance_id: "i".into() };
        let e = manifest_event(EventKind::Push, &target, &origin, &source);
        assert_eq!(e["action"], "push");
        assert_eq!(e["target"]["tag"], "v1");
        assert_eq!(e["target"]["length"], 1);
        assert_eq!(e["target"]["url"], format!("http://reg.example/v2/prod/app/manifests/{digest}"));
        assert_eq!(e["actor"]["name"], "ci");
        assert_eq!(e["source"]["instanceID"], "i");
        assert_eq!(e["request"]["method"], "PUT");
    }
}
