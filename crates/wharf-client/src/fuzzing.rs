//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs). Each one
//! runs a parser of what a registry, possibly a hostile one, sends this client.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

/// Every challenge of one `WWW-Authenticate` value: lowercased scheme and parameters.
pub fn challenges(header: &str) -> Vec<(String, BTreeMap<String, String>)> {
    crate::challenge::parse(header).into_iter().map(|c| (c.scheme, c.params)).collect()
}

/// A token server's JSON answer: the token and how long it is used.
pub fn token_answer(body: &[u8]) -> Result<(String, Duration), String> {
    crate::auth::token_answer(body)
}

/// A ranged blob response's `Content-Range`: (start, end, total).
pub fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    crate::blob::parse_content_range(value)
}

/// How long a `Retry-After` value makes the client wait (bounded).
pub fn retry_after(value: &str) -> Option<Duration> {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_str(value).ok()?);
    crate::client::retry_after(&h)
}
