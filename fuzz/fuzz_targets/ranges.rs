//! Byte ranges in both directions: the registry's `Range` (blob GET) and chunk
//! `Content-Range` (PATCH) parsers, its query strings and `Authorization` headers; the
//! client's `Content-Range` of ranged answers and `Retry-After`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_client::fuzzing as client;
use wharf_server::fuzzing as server;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    // The first line is the header value, the rest (if any) a second value.
    let (value, other) = s.split_once('\n').map_or((s, None), |(a, b)| (a, Some(b)));
    if let Some(Ok((first, Some(last)))) = server::range(value) {
        let _ = (first, last);
    }
    if let Some(Ok(start)) = server::chunk_range(value, other) {
        // An accepted chunk range with a length says exactly that many bytes follow.
        // (As the server reads it: hyper has already refused a Content-Length that is not
        // a number, so an unparsable one is not checked here.)
        if let Some(len) = other.and_then(|l| l.parse::<u64>().ok()) {
            assert!(len >= 1, "{value:?} {other:?} -> {start}");
        }
    }
    let _ = server::query(&format!("/v2/x/tags/list?{value}"));
    let _ = server::authorization(value);
    if let Some((start, end, total)) = client::content_range(value) {
        let _ = (start, end, total);
    }
    if let Some(d) = client::retry_after(value) {
        assert!(d.as_secs() <= 30, "Retry-After is bounded: {value:?} -> {d:?}");
    }
});
