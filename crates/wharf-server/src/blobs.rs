//! Blob reads, deletes and the upload protocol (monolithic, chunked, mount).

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wharf_oci::{Digest, ErrorCode, RepoName};
use wharf_registry::{MountOutcome, Registry};

use crate::{ApiError, ApiResult, CONTENT_DIGEST, UPLOAD_UUID, body_stream, header_str, hv, query_param};

/// `Range: bytes=first-[last]` as (first, last). Only single ranges are supported.
pub(crate) fn parse_range(headers: &HeaderMap) -> Result<Option<(u64, Option<u64>)>, ApiError> {
    let Some(value) = header_str(headers, header::RANGE) else { return Ok(None) };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::RangeInvalid,
            format!("Range {value:?} is not supported: use a single range bytes=FIRST-[LAST]"),
        )
    };
    let spec = value.strip_prefix("bytes=").ok_or_else(bad)?;
    let (first, last) = spec.split_once('-').ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last = match last.trim() {
        "" => None,
        l => Some(l.parse::<u64>().map_err(|_| bad())?),
    };
    Ok(Some((first, last)))
}

pub async fn get(
    reg: &Registry,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    body: bool,
) -> ApiResult {
    let range = parse_range(headers)?;
    if !body {
        // HEAD never fills from an upstream (only a pull does): an absent blob is a 404 here,
        // with or without a Range.
        let size = reg.blob_size(repo, digest, false).await?;
        if range.is_none() {
            return Ok(blob_headers(StatusCode::OK, digest, size, Body::empty()));
        }
    }
    if body && let Some(url) = reg.blob_redirect(repo, digest).await? {
        // The client fetches the bytes (and any Range) from the object store directly.
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        resp.headers_mut().insert(header::LOCATION, hv(&url));
        resp.headers_mut().insert(CONTENT_DIGEST, hv(&digest.to_string()));
        return Ok(resp);
    }
    let read = reg.read_blob(repo, digest, range).await?;
    let status = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let len = read.len;
    let content = if body { Body::from_stream(read.body) } else { Body::empty() };
    let mut resp = blob_headers(status, digest, len, content);
    if range.is_some() {
        let last = read.start + read.len.saturating_sub(1);
        resp.headers_mut()
            .insert(header::CONTENT_RANGE, hv(&format!("bytes {}-{}/{}", read.start, last, read.size)));
    }
    Ok(resp)
}

fn blob_headers(status: StatusCode, digest: &Digest, len: u64, body: Body) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
    resp
}

pub async fn delete(reg: &Registry, repo: &RepoName, digest: &Digest) -> ApiResult {
    reg.delete_blob(repo, digest).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn parse_digest_param(value: &str) -> Result<Digest, ApiError> {
    value.parse().map_err(|e: wharf_oci::DigestError| {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid, e.to_string())
    })
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/{digest}")));
    h.insert(CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

/// 202 for an open session: where to send the next chunk and how much has arrived.
fn upload_accepted(status: StatusCode, repo: &RepoName, id: &str, size: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{repo}/blobs/uploads/{id}")));
    // distribution reports an empty upload as 0-0; clients accept either.
    h.insert(header::RANGE, hv(&format!("0-{}", size.saturating_sub(1))));
    h.insert(UPLOAD_UUID, hv(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    resp
}

pub async fn start_upload(reg: &Registry, repo: &RepoName, req: Request) -> ApiResult {
    if let Some(mount) = query_param(req.uri(), "mount") {
        let digest = parse_digest_param(&mount)?;
        let from = match query_param(req.uri(), "from") {
            Some(f) => Some(f.parse::<RepoName>().map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::NameInvalid, e.to_string())
            })?),
            None => None,
        };
        return Ok(match reg.mount_blob(repo, &digest, from.as_ref()).await? {
            MountOutcome::Mounted { .. } => blob_created(repo, &digest),
            MountOutcome::Upload { id } => upload_accepted(StatusCode::ACCEPTED, repo, &id, 0),
        });
    }
    if let Some(d) = query_param(req.uri(), "digest") {
        let digest = parse_digest_param(&d)?;
        reg.put_blob(repo, &digest, body_stream(req.into_body())).await?;
        return Ok(blob_created(repo, &digest));
    }
    let id = reg.start_upload(repo).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, repo, &id, 0))
}

pub async fn upload_status(reg: &Registry, repo: &RepoName, id: &str) -> ApiResult {
    let size = reg.upload_status(repo, id).await?;
    Ok(upload_accepted(StatusCode::NO_CONTENT, repo, id, size))
}

/// `Content-Range: <start>-<end>` of a chunk (the spec's form, without `bytes `).
/// Returns the start offset, checked against `Content-Length` when both are given.
pub(crate) fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = header_str(headers, header::CONTENT_RANGE) else { return Ok(None) };
    let bad = |why: &str| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {value:?} {why}; send <start>-<end> of this chunk"),
        )
    };
    let spec = value.trim_start_matches("bytes ").trim_start_matches("bytes=");
    let (start, end) = spec.split_once('-').ok_or_else(|| bad("is malformed"))?;
    let start: u64 = start.trim().parse().map_err(|_| bad("is malformed"))?;
    let end: u64 = end.split('/').next().unwrap_or("").trim().parse().map_err(|_| bad("is malformed"))?;
    if end < start {
        return Err(bad("ends before it starts"));
    }
    if let Some(len) = header_str(headers, header::CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok())
        // `0-18446744073709551615` is u64::MAX + 1 bytes: no length matches it.
        && Some(len) != (end - start).checked_add(1)
    {
        return Err(bad(&format!("does not match Content-Length {len}")));
    }
    Ok(Some(start))
}

pub async fn patch_upload(reg: &Registry, repo: &RepoName, id: &str, req: Request) -> ApiResult {
    let start = chunk_start(req.headers())?;
    let size = reg.append_upload(repo, id, start, body_stream(req.into_body())).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, repo, id, size))
}

pub async fn finish_upload(reg: &Registry, repo: &RepoName, id: &str, req: Request) -> ApiResult {
    let Some(d) = query_param(req.uri(), "digest") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::DigestInvalid,
            "closing an upload needs ?digest=<algorithm>:<hex> of the whole blob",
        ));
    };
    let digest = parse_digest_param(&d)?;
    let start = chunk_start(req.headers())?;
    let body = req.into_body();
    let last_chunk =
        if body.size_hint().exact() == Some(0) { None } else { Some((start, body_stream(body))) };
    reg.finish_upload(repo, id, &digest, last_chunk).await?;
    Ok(blob_created(repo, &digest))
}

pub async fn cancel_upload(reg: &Registry, repo: &RepoName, id: &str) -> ApiResult {
    reg.cancel_upload(repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
