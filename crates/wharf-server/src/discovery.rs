//! Tags list, catalog and referrers.

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use wharf_oci::{Digest, ErrorCode, RepoName, media_types};
use wharf_registry::Registry;

use crate::{ApiError, ApiResult, OCI_FILTERS_APPLIED, query_param};

/// `n` and `last` of a paginated listing.
pub(crate) fn paging(uri: &Uri) -> Result<(Option<u32>, Option<String>), ApiError> {
    let n = match query_param(uri, "n") {
        None => None,
        Some(n) => Some(n.parse::<u32>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                format!("n={n:?} is not a page size: use a non-negative integer"),
            )
        })?),
    };
    Ok((n, query_param(uri, "last")))
}

/// A JSON listing with a `Link: <…>; rel="next"` when the page is full.
pub(crate) fn listing(
    body: serde_json::Value,
    items: &[String],
    n: Option<u32>,
    next_base: &str,
) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let (Some(n), Some(last)) = (n, items.last())
        && n > 0
        && items.len() == n as usize
    {
        let link = format!("<{next_base}?n={n}&last={last}>; rel=\"next\"");
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
    }
    resp
}

pub async fn tags(reg: &Registry, repo: &RepoName, uri: &Uri) -> ApiResult {
    let (n, last) = paging(uri)?;
    let tags = if n == Some(0) { Vec::new() } else { reg.tags(repo, n, last.as_deref()).await? };
    let body = serde_json::json!({ "name": repo.as_str(), "tags": tags });
    Ok(listing(body, &tags, n, &format!("/v2/{repo}/tags/list")))
}

pub async fn catalog(reg: &Registry, uri: &Uri) -> ApiResult {
    let (n, last) = paging(uri)?;
    let repos = if n == Some(0) { Vec::new() } else { reg.catalog(n, last.as_deref()).await? };
    let body = serde_json::json!({ "repositories": repos });
    Ok(listing(body, &repos, n, "/v2/_catalog"))
}

pub async fn referrers(reg: &Registry, repo: &RepoName, subject: &Digest, uri: &Uri) -> ApiResult {
    let artifact_type = query_param(uri, "artifactType");
    let index = reg.referrers(repo, subject, artifact_type.as_deref()).await?;
    let mut resp = (StatusCode::OK, index).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_types::OCI_INDEX));
    if artifact_type.is_some() {
        h.insert(OCI_FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}
