//! Prometheus metrics (`GET /metrics`) and the request log. Counters are plain atomics: the
//! registry's hot paths pay one relaxed increment per request.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use wharf_oci::Route;

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

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP wharf_http_requests_total HTTP requests by endpoint and status class.\n");
        out.push_str("# TYPE wharf_http_requests_total counter\n");
        for (e, name) in ENDPOINTS.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[e][c].load(Ordering::Relaxed);
                let _ =
                    writeln!(out, "wharf_http_requests_total{{endpoint=\"{name}\",status=\"{class}\"}} {n}");
            }
        }
        out.push_str("# HELP wharf_http_request_duration_seconds Time to the response head.\n");
        out.push_str("# TYPE wharf_http_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ =
                writeln!(out, "wharf_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.latency[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "wharf_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "wharf_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "wharf_http_request_duration_seconds_count {cumulative}");
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
        let text = m.render();
        assert!(text.contains("wharf_http_requests_total{endpoint=\"manifests\",status=\"2xx\"} 1"));
        assert!(text.contains("wharf_http_requests_total{endpoint=\"manifests\",status=\"4xx\"} 1"));
        assert!(text.contains("wharf_http_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("wharf_http_request_duration_seconds_bucket{le=\"0.1\"} 2"));
        assert!(text.contains("wharf_http_request_duration_seconds_count 2"));
    }
}
