//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the docs). Each one
//! runs a request-header parser of this crate on a hostile string.

use axum::http::{HeaderMap, HeaderValue, Uri, header};

fn headers(pairs: &[(header::HeaderName, &str)]) -> Option<HeaderMap> {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.insert(name.clone(), HeaderValue::from_str(value).ok()?);
    }
    Some(h)
}

/// A blob GET's `Range` header: `Some(Ok((first, last)))` when accepted, else the
/// error status.
pub fn range(value: &str) -> Option<Result<(u64, Option<u64>), u16>> {
    let h = headers(&[(header::RANGE, value)])?;
    Some(
        crate::blobs::parse_range(&h)
            .map(|r| r.expect("a Range header was given"))
            .map_err(|e| e.status.as_u16()),
    )
}

/// A chunk PATCH's `Content-Range` (and `Content-Length`): the start offset when accepted.
pub fn chunk_range(value: &str, content_length: Option<&str>) -> Option<Result<u64, u16>> {
    let mut pairs = vec![(header::CONTENT_RANGE, value)];
    pairs.extend(content_length.map(|l| (header::CONTENT_LENGTH, l)));
    let h = headers(&pairs)?;
    Some(
        crate::blobs::chunk_start(&h)
            .map(|r| r.expect("a Content-Range header was given"))
            .map_err(|e| e.status.as_u16()),
    )
}

/// The query string of a request URI, percent-decoded.
pub fn query(uri: &str) -> Option<Vec<(String, String)>> {
    let uri: Uri = uri.parse().ok()?;
    Some(crate::query_params(&uri))
}

/// Which credentials an `Authorization` header presents: "nothing", "basic", "bearer" or
/// "invalid".
pub fn authorization(value: &str) -> Option<&'static str> {
    let h = headers(&[(header::AUTHORIZATION, value)])?;
    Some(crate::auth::presented_kind(&h))
}
