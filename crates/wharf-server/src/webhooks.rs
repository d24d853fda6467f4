//! Delivery of webhook events (`[[webhooks]]`) from the outbox in the metadata store.
//!
//! Pushes and deletes only queue rows (in their own transaction, `wharf-registry/src/events.rs`);
//! this task, one per server process, claims due rows under a lease (so that replicas sharing a
//! PostgreSQL database deliver each row once), POSTs each in distribution's envelope, deletes it
//! when the receiver answers 2xx, and otherwise retries it with exponential backoff and jitter
//! up to a cap, until `max_attempts`: then the row is marked dead (kept for an operator) and
//! counted. Delivery is at least once: a process killed between the POST and the delete sends
//! that event again after the lease expires. A process that stops gracefully hands back the
//! events it claimed and did not finish, so that another replica (or its next start) sends
//! them at once instead of a lease later.
//!
//! With a `secret`, the body is signed like GitHub's webhooks:
//! `X-Wharf-Signature-256: sha256=<hex HMAC-SHA256 of the body under the secret>`.

use std::time::Duration;

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use sha2::Sha256;
use wharf_metadata::QueuedEvent;
use wharf_registry::Registry;
use wharf_registry::events::ENVELOPE_TYPE;

pub const SIGNATURE_HEADER: &str = "x-wharf-signature-256";
pub const EVENT_HEADER: &str = "x-wharf-event";

/// How the deliverer paces itself.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// How often the outbox is looked at without a local push waking the deliverer (rows
    /// queued by another replica, retries falling due).
    pub poll: Duration,
    /// Wait after the first failure; doubled after each further one, up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Attempts before an event is given up on (marked dead).
    pub max_attempts: u32,
    /// Per request.
    pub timeout: Duration,
    /// How long a claimed row stays away from other deliverers.
    pub lease: Duration,
    /// Rows claimed at once.
    pub batch: u32,
    /// Deliveries in flight at once (one slow receiver does not hold the others up for long).
    pub concurrency: usize,
    /// After a stop, how long deliveries under way may still finish (a receiver that has the
    /// POST may be about to answer) before the rest is handed back.
    pub drain: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            poll: Duration::from_secs(1),
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 12,
            timeout: Duration::from_secs(10),
            // Longer than a claimed batch can take (batch / concurrency rounds of at most
            // `timeout`), so that no row's lease runs out while it waits its turn here.
            lease: Duration::from_secs(60),
            batch: 16,
            drain: Duration::from_secs(2),
            concurrency: 8,
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempts + 1`: `first * 2^(attempts-1)` capped, then "equal
/// jitter" (half fixed, half random) so that many failed events do not retry in step.
pub fn backoff(settings: &DeliverySettings, attempts: u32, random: u64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = settings.first_backoff.saturating_mul(1 << exp).min(settings.max_backoff);
    let half = full / 2;
    let spread = half.as_millis() as u64;
    half + Duration::from_millis(if spread == 0 { 0 } else { random % (spread + 1) })
}

/// Deliver queued events until `stop` fires (then hand back the unfinished ones) or the task
/// is dropped. Returns at once when no webhook is configured.
pub async fn deliver(
    registry: Registry,
    settings: DeliverySettings,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    if registry.config().webhooks.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhooks: cannot build the HTTP client; events stay queued");
            return;
        }
    };
    tracing::info!(webhooks = registry.config().webhooks.len(), "webhook delivery started");
    let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
    loop {
        // A stop is checked between batches too, so no batch is claimed after it.
        if !matches!(stop.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
            return;
        }
        // Not raced against `stop`: a claim dropped after its commit would hold its rows for
        // the lease. A stop during the claim is seen just below, and the rows handed back.
        match registry.metadata().claim_events(settings.batch, lease_ms).await {
            Ok(batch) if !batch.is_empty() => {
                if deliver_batch(&registry, &client, &settings, batch, &mut stop).await {
                    return;
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot read the outbox"),
        }
        tokio::select! {
            biased;
            _ = &mut stop => return,
            _ = tokio::time::sleep(settings.poll) => {}
            _ = registry.events_queued() => {}
        }
    }
}

/// Deliver a claimed batch; `true` when `stop` fired meanwhile. Then deliveries under way get
/// `settings.drain` to finish, and every event not finished is handed back (one whose POST
/// never started without the attempt its claim counted).
async fn deliver_batch(
    registry: &Registry,
    client: &reqwest::Client,
    settings: &DeliverySettings,
    batch: Vec<QueuedEvent>,
    stop: &mut tokio::sync::oneshot::Receiver<()>,
) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    // Each claimed event until its outcome is recorded, and whether its POST started.
    let pending: std::sync::Mutex<std::collections::HashMap<i64, (QueuedEvent, bool)>> =
        std::sync::Mutex::new(batch.iter().map(|e| (e.id, (e.clone(), false))).collect());
    let stopping = AtomicBool::new(false);
    let run =
        futures_util::stream::iter(batch).for_each_concurrent(settings.concurrency.max(1), |event| async {
            if stopping.load(Relaxed) {
                return; // not started: handed back below
            }
            let id = event.id;
            if let Some((_, started)) = pending.lock().expect("not poisoned").get_mut(&id) {
                *started = true;
            }
            deliver_one(registry, client, settings, event).await;
            pending.lock().expect("not poisoned").remove(&id);
        });
    let mut run = std::pin::pin!(run);
    tokio::select! {
        biased;
        _ = &mut *stop => {}
        _ = &mut run => return false,
    }
    stopping.store(true, Relaxed);
    let _ = tokio::time::timeout(settings.drain, &mut run).await;
    let unfinished = std::mem::take(&mut *pending.lock().expect("not poisoned"));
    for (event, started) in unfinished.values() {
        if let Err(e) = registry.metadata().event_released(event, *started).await {
            tracing::warn!(error = %e, id = event.id, "webhooks: cannot hand back an event; it is sent once its lease runs out");
        }
    }
    tracing::debug!(events = unfinished.len(), "webhook delivery stopped; unfinished events handed back");
    true
}

async fn deliver_one(
    registry: &Registry,
    client: &reqwest::Client,
    settings: &DeliverySettings,
    event: QueuedEvent,
) {
    let stats = registry.webhook_stats();
    let meta = registry.metadata();
    let Some(hook) = registry.webhook(&event.target) else {
        // The config changed since the event was queued.
        stats.count(&stats.dead);
        let why = "no [[webhooks]] entry has this url any more";
        tracing::warn!(url = %event.target, id = event.id, "webhook event dropped: {why}");
        if let Err(e) = meta.event_dead(event.id, why).await {
            tracing::warn!(error = %e, "webhooks: cannot mark an event dead");
        }
        return;
    };
    let body = format!("{{\"events\":[{}]}}", event.body);
    let mut req = client
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, ENVELOPE_TYPE)
        .header(EVENT_HEADER, event.kind.as_str());
    if let Some(secret) = &hook.secret {
        req = req.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
    }
    let outcome = match req.body(body).send().await {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(format!("the receiver answered {}", resp.status())),
        Err(e) => Err(format!("cannot reach the receiver: {e}")),
    };
    let result = match outcome {
        Ok(()) => {
            stats.count(&stats.delivered);
            tracing::debug!(url = %hook.url, id = event.id, kind = %event.kind, "webhook event delivered");
            meta.event_delivered(event.id).await
        }
        Err(why) if event.attempts >= settings.max_attempts => {
            stats.count(&stats.failed);
            stats.count(&stats.dead);
            tracing::warn!(url = %hook.url, id = event.id, attempts = event.attempts, "webhook event given up: {why}");
            meta.event_dead(event.id, &why).await
        }
        Err(why) => {
            stats.count(&stats.failed);
            let wait = backoff(settings, event.attempts, uuid::Uuid::new_v4().as_u64_pair().0);
            tracing::info!(url = %hook.url, id = event.id, attempts = event.attempts, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed: {why}");
            let at = now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            meta.event_retry(event.id, at, &why).await
        }
    };
    if let Err(e) = result {
        // The lease runs out and the event is tried again: at least once.
        tracing::warn!(error = %e, id = event.id, "webhooks: cannot record a delivery outcome");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The webhook figures of one scrape: this process's delivery counters, and the outbox's
/// depth (all replicas; `None` without `[[webhooks]]` or when the database does not answer).
#[derive(Debug, Default)]
pub(crate) struct Figures {
    delivered: u64,
    failed: u64,
    dead: u64,
    queue: Option<(u64, u64)>,
}

impl Figures {
    pub(crate) async fn read(registry: &Registry) -> Figures {
        use std::sync::atomic::Ordering::Relaxed;
        let s = registry.webhook_stats();
        let queue = match registry.config().webhooks.is_empty() {
            true => None,
            false => match registry.metadata().event_queue_depth().await {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::debug!(error = %e, "webhooks: no queue depth for /metrics");
                    None
                }
            },
        };
        Figures {
            delivered: s.delivered.load(Relaxed),
            failed: s.failed.load(Relaxed),
            dead: s.dead.load(Relaxed),
            queue,
        }
    }

    pub(crate) fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::family;
        family(
            e,
            "wharf_webhook_deliveries",
            "Webhook delivery attempts by result (dead: given up).",
            MetricType::Counter,
            [
                (vec![("result", "ok")], self.delivered),
                (vec![("result", "failed")], self.failed),
                (vec![("result", "dead")], self.dead),
            ],
        )?;
        if let Some((waiting, dead)) = self.queue {
            family(
                e,
                "wharf_webhook_queue_depth",
                "Webhook events waiting for delivery (all replicas).",
                MetricType::Gauge,
                [(vec![], waiting)],
            )?;
            family(
                e,
                "wharf_webhook_dead_events",
                "Webhook events given up on, kept in the outbox.",
                MetricType::Gauge,
                [(vec![], dead)],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_finishes_within_its_lease() {
        let s = DeliverySettings::default();
        let rounds = u32::try_from(s.batch as usize).unwrap().div_ceil(s.concurrency as u32);
        assert!(s.timeout * rounds < s.lease);
    }

    #[test]
    fn signs_like_github() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn backs_off_exponentially_with_jitter_up_to_the_cap() {
        let s = DeliverySettings::default();
        let at = |n, r| backoff(&s, n, r);
        assert_eq!(at(1, 0), Duration::from_millis(500));
        assert_eq!(at(1, u64::MAX), Duration::from_millis(500) + Duration::from_millis(u64::MAX % 501));
        assert!(at(3, 7) >= Duration::from_secs(2) && at(3, 7) <= Duration::from_secs(4));
        assert!(at(40, 123) <= s.max_backoff && at(40, 123) >= s.max_backoff / 2);
    }
}
