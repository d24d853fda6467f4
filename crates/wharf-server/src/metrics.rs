//! Prometheus metrics (`GET /metrics`) and the request log. Counters are plain atomics: the
//! registry's hot paths pay one relaxed increment per request. A scrape hands their values to
//! `prometheus-client` (the Prometheus project's Rust client), which writes the exposition
//! format (OpenMetrics text): names, escaping and histogram layout are the library's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use wharf_oci::Route;

use crate::mirrors::MirrorBoard;

/// `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint families requests are counted by.
const ENDPOINTS: [&str; 9] =
    ["base", "catalog", "tags", "manifests", "blobs", "uploads", "referrers", "wharf", "other"];
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];
/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 8] = [0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0, 60.0];

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; CLASSES.len()]; ENDPOINTS.len()],
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

pub fn endpoint(route: Option<&Route>) -> usize {
    match route {
        Some(Route::Base) => 0,
        Some(Route::Catalog) => 1,
        Some(Route::Tags(_)) => 2,
        Some(Route::Manifest(..)) => 3,
        Some(Route::Blob(..)) => 4,
        Some(Route::UploadStart(_) | Route::Upload(..)) => 5,
        Some(Route::Referrers(..)) => 6,
        Some(Route::Extension(..) | Route::RegistryExtension(_)) => 7,
        None => 8,
    }
}

impl Metrics {
    /// Count a finished request and log it (errors of the server at warn, the rest at debug:
    /// a 404 on HEAD is how clients ask whether a blob exists).
    pub fn record(&self, endpoint: usize, method: &Method, path: &str, status: u16, elapsed: Duration) {
        let class = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.requests[endpoint][class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|b| secs <= *b).unwrap_or(BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        let ms = elapsed.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(%method, path, status, ms, "request failed");
        } else {
            tracing::debug!(%method, path, status, ms, "request");
        }
    }

    /// The request counters and the latency histogram.
    fn encode(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            "wharf_http_requests",
            "HTTP requests by endpoint and status class.",
            None,
            MetricType::Counter,
        )?;
        for (i, name) in ENDPOINTS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[i][c].load(Ordering::Relaxed);
                ConstCounter::new(n).encode(m.encode_family(&[("endpoint", *name), ("status", *class)])?)?;
            }
        }
        // The library's buckets are per bucket (it adds them up), the last one `+Inf`.
        let mut buckets: Vec<(f64, u64)> =
            BUCKETS.iter().enumerate().map(|(i, b)| (*b, self.latency[i].load(Ordering::Relaxed))).collect();
        buckets.push((f64::MAX, self.latency[BUCKETS.len()].load(Ordering::Relaxed)));
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        e.encode_descriptor(
            "wharf_http_request_duration_seconds",
            "Time to the response head.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// A gauge or counter family of one sample per label set (an empty set: the family's only
/// sample, without braces).
pub(crate) fn family<'l>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'l str, &'l str)>, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (labels, n) in samples {
        if labels.is_empty() {
            return sample(kind, n, m);
        }
        sample(kind, n, m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn sample(kind: MetricType, n: u64, m: MetricEncoder) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(n).encode(m),
        _ => ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m),
    }
}

/// Everything one scrape writes, read at the time of the scrape.
pub(crate) struct Scrape {
    pub metrics: Arc<Metrics>,
    pub mirrors: Arc<MirrorBoard>,
    pub webhooks: crate::webhooks::Figures,
    /// Login counters, with `[auth]`.
    pub auth: Option<Arc<wharf_auth::Authority>>,
}

impl std::fmt::Debug for Scrape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        self.metrics.encode(&mut e)?;
        self.mirrors.encode_metrics(&mut e)?;
        if let Some(auth) = &self.auth {
            crate::auth::encode_metrics(auth, &mut e)?;
        }
        self.webhooks.encode(&mut e)
    }
}

impl Scrape {
    /// The exposition text.
    pub(crate) fn render(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.record(3, &Method::GET, "/v2/a/manifests/v1", 200, Duration::from_millis(2));
        m.record(3, &Method::GET, "/v2/a/manifests/v2", 404, Duration::from_millis(30));
        let text = Scrape {
            metrics: Arc::new(m),
            mirrors: Default::default(),
            webhooks: Default::default(),
            auth: None,
        }
        .render();
        assert!(text.contains("# TYPE wharf_http_requests counter"), "{text}");
        assert!(text.contains("wharf_http_request_duration_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("wharf_http_requests_total{endpoint=\"manifests\",status=\"2xx\"} 1"));
        assert!(text.contains("wharf_http_requests_total{endpoint=\"manifests\",status=\"4xx\"} 1"));
        assert!(text.contains("wharf_http_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("wharf_http_request_duration_seconds_bucket{le=\"0.1\"} 2"));
        assert!(text.contains("wharf_http_request_duration_seconds_count 2"));
    }
}
