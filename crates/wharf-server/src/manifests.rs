//! Manifest GET/HEAD/PUT/DELETE. Bytes go in and out exactly as received.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use wharf_oci::{MAX_MANIFEST_BYTES, Reference, RepoName};

/// How much of an oversized manifest body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
use wharf_registry::{EventOrigin, Registry, RegistryError};

use crate::auth::EventActor;
use crate::{ApiResult, CONTENT_DIGEST, OCI_SUBJECT, header_str, hv};

fn manifest_response(digest: &str, media_type: &str, len: u64, body: Body) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONTENT_DIGEST, hv(digest));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
    resp
}

pub async fn get(reg: &Registry, repo: &RepoName, reference: &Reference, with_body: bool) -> ApiResult {
    if !with_body {
        // HEAD never fills from an upstream: only a pull (GET) does.
        let (digest, media_type, size) = reg.stat_manifest(repo, reference, false).await?;
        return Ok(manifest_response(&digest.to_string(), &media_type, size, Body::empty()));
    }
    let m = reg.get_manifest(repo, reference).await?;
    let len = m.content.len() as u64;
    Ok(manifest_response(&m.digest.to_string(), &m.media_type, len, Body::from(m.content)))
}

pub async fn put(reg: &Registry, repo: &RepoName, reference: &Reference, req: Request) -> ApiResult {
    let origin = event_origin(&req);
    let content_type = header_str(req.headers(), header::CONTENT_TYPE).map(str::to_owned);
    let declared = header_str(req.headers(), header::CONTENT_LENGTH).and_then(|l| l.parse::<usize>().ok());
    let expects_continue =
        header_str(req.headers(), header::EXPECT).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if let Some(len) = declared.filter(|l| *l > MAX_MANIFEST_BYTES && (expects_continue || *l > DRAIN_LIMIT))
    {
        // Refused before a byte of it is read: a client waiting for "100 Continue" never sends
        // it, and one that declares more than we would drain learns at once. The connection
        // cannot be reused with an unread body in it.
        let mut resp = crate::ApiError::from(RegistryError::ManifestTooLarge(len)).into_response();
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(resp);
    }
    let mut body = req.into_body().into_data_stream();
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(MAX_MANIFEST_BYTES));
    let mut received = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| RegistryError::ManifestInvalid(format!("reading the manifest body: {e}")))?;
        received += chunk.len();
        if received <= MAX_MANIFEST_BYTES {
            bytes.extend_from_slice(&chunk);
        } else if received > DRAIN_LIMIT {
            break;
        }
    }
    if received > MAX_MANIFEST_BYTES {
        // Read (and dropped) the rest first, up to a bound, so that the client sees the 413
        // instead of a connection reset in the middle of its upload.
        return Err(RegistryError::ManifestTooLarge(received.max(declared.unwrap_or(0))).into());
    }
    let pushed = reg.put_manifest_from(repo, reference, content_type.as_deref(), &bytes, &origin).await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{repo}/manifests/{}", pushed.digest)));
    h.insert(CONTENT_DIGEST, hv(&pushed.digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if let Some(subject) = pushed.subject {
        h.insert(OCI_SUBJECT, hv(&subject.to_string()));
    }
    Ok(resp)
}

pub async fn delete(
    reg: &Registry,
    repo: &RepoName,
    reference: &Reference,
    origin: EventOrigin,
) -> ApiResult {
    reg.delete_manifest_from(repo, reference, &origin).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The request as webhook events describe it (distribution's `request` and `actor`).
pub(crate) fn event_origin(req: &Request) -> EventOrigin {
    let h = req.headers();
    let text = |name: &str| header_str(h, name).map(str::to_owned);
    EventOrigin {
        actor: req.extensions().get::<EventActor>().map(|a| a.0.clone()),
        // Behind a proxy the client is the first address it lists.
        addr: header_str(h, "x-forwarded-for").and_then(|v| v.split(',').next()).map(|a| a.trim().to_owned()),
        host: text("host"),
        scheme: text("x-forwarded-proto"),
        method: req.method().to_string(),
        useragent: text("user-agent"),
    }
}
