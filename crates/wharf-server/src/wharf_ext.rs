//! `/v2/<name>/_wharf/…` and `/v2/_wharf/…`: Wharf's extension endpoints.
//!
//! - `GET /v2/<name>/_wharf/index/<reference>`: presence report of an index: each child
//!   with platform, size, present or absent, bytes stored; totals.
//! - `GET /v2/_wharf/storage`: storage report of the registry: per repository its
//!   manifests, tags, indexes (sparse ones too), linked blobs, and what its indexes store
//!   and would need complete; totals, with blobs shared between repositories counted once.
//!   With auth, only the repositories the caller may pull (see `auth.rs`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use wharf_oci::{ErrorCode, Reference, RepoName};
use wharf_registry::Registry;

use crate::auth::CatalogFilter;
use crate::{ApiError, ApiResult};

pub const INDEX_REPORT_TYPE: &str = "application/vnd.wharf.index-report.v1+json";
pub const STORAGE_REPORT_TYPE: &str = "application/vnd.wharf.storage-report.v1+json";

pub async fn get(reg: &Registry, repo: &RepoName, rest: &str) -> ApiResult {
    let Some(reference) = rest.strip_prefix("index/") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!("no Wharf extension at _wharf/{rest}; known: _wharf/index/<tag or digest>"),
        ));
    };
    let reference: Reference = reference.parse().map_err(|e: wharf_oci::RouteError| {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::ManifestInvalid, e.to_string())
    })?;
    let report = reg.index_report(repo, &reference).await?;
    let body = serde_json::to_string(&report).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(INDEX_REPORT_TYPE));
    Ok(resp)
}

/// `GET /v2/_wharf/<rest>`: the registry-wide extensions. `filter` is set when auth is on.
pub async fn get_registry(reg: &Registry, rest: &str, filter: Option<&CatalogFilter>) -> ApiResult {
    if rest != "storage" {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            format!("no Wharf extension at /v2/_wharf/{rest}; known: /v2/_wharf/storage, /v2/_wharf/mirrors"),
        ));
    }
    let report = match filter {
        Some(f) => reg.storage_report(|r| f.may_pull(r)).await?,
        None => reg.storage_report(|_| true).await?,
    };
    let body = serde_json::to_string(&report).unwrap_or_default();
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(STORAGE_REPORT_TYPE));
    Ok(resp)
}
