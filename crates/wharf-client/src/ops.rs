//! Manifests, tags, referrers, blob existence and mounts, raw extension requests.

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, LINK};
use reqwest::{Method, StatusCode, Url};
use wharf_oci::{Algorithm, Descriptor, Digest, MAX_MANIFEST_BYTES, Reference, RepoName, media_types};

use crate::client::{Req, content_type, header_str, header_u64, read_limited, scope};
use crate::{ClientError, Mounted, RegistryClient};

/// The `Accept` header for manifests: OCI and Docker, images and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Manifest bytes exactly as the registry sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    /// The digest of `bytes` (verified: computed here).
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// The page a `Link: <…>; rel="next"` points at, resolved against the current one; `None` at
/// the end, or when it points back at a page already read (a registry looping its `Link`).
fn next_page(
    current: &Url,
    next: Option<String>,
    seen: &std::collections::HashSet<String>,
) -> Result<Option<Url>, ClientError> {
    let Some(next) = next else { return Ok(None) };
    let url = current.join(&next).map_err(|e| ClientError::Invalid(format!("bad Link {next:?}: {e}")))?;
    Ok((!seen.contains(url.as_str())).then_some(url))
}

/// Most tag-list or referrers pages followed before giving up (a registry looping its `Link`).
const MAX_PAGES: usize = 10_000;

fn at(repo: &RepoName, reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => format!("{repo}:{t}"),
        Reference::Digest(d) => format!("{repo}@{d}"),
    }
}

/// A media type worth believing from `Content-Type` (registries behind some proxies send
/// `application/json` or `text/plain`).
fn specific(ct: Option<String>) -> Option<String> {
    ct.filter(|c| !matches!(c.as_str(), "application/json" | "text/plain" | "application/octet-stream"))
}

/// The media type a manifest declares about itself, or that its shape implies.
fn media_type_from_body(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    if let Some(m) = v.get("mediaType").and_then(|m| m.as_str()) {
        return m.to_owned();
    }
    if v.get("manifests").is_some() {
        media_types::OCI_INDEX.to_owned()
    } else {
        media_types::OCI_MANIFEST.to_owned()
    }
}

/// The `rel="next"` target of a `Link` header.
pub(crate) fn next_link(link: &str) -> Option<String> {
    for part in link.split(',') {
        let part = part.trim();
        let (Some(start), Some(end)) = (part.find('<'), part.find('>')) else { continue };
        if end <= start {
            continue;
        }
        let params = &part[end + 1..];
        let is_next = params.split(';').any(|p| {
            let p = p.trim().to_ascii_lowercase().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        if is_next {
            return Some(part[start + 1..end].to_owned());
        }
    }
    None
}

impl RegistryClient {
    fn describe(&self, what: &str, repo: &RepoName, reference: &Reference) -> String {
        format!("{what} {} on {}", at(repo, reference), self.inner.host)
    }

    /// `GET /v2/<repo>/manifests/<reference>`: the bytes exactly, their verified digest.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<RawManifest, ClientError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let req = Req::new(Method::GET, url, vec![scope(repo, "pull")]).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(&req).await?;
        if !resp.status().is_success() {
            return Err(self.error_for(resp, || self.describe("manifest", repo, reference)).await);
        }
        let ct = specific(content_type(resp.headers()));
        let header_digest: Option<Digest> =
            header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse().ok());
        let bytes = read_limited(resp, MAX_MANIFEST_BYTES).await.map_err(|e| match e {
            ClientError::Invalid(m) => {
                ClientError::Invalid(format!("manifest {}: {m} (the limit is 4 MiB)", at(repo, reference)))
            }
            other => other,
        })?;
        let expected = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => header_digest,
        };
        let digest = match expected {
            Some(expected) => {
                let actual = Digest::compute(expected.algorithm(), &bytes);
                if actual != expected {
                    return Err(ClientError::DigestMismatch { expected, actual });
                }
                expected
            }
            None => Digest::compute(Algorithm::Sha256, &bytes),
        };
        let media_type = ct.unwrap_or_else(|| media_type_from_body(&bytes));
        Ok(RawManifest { digest, media_type, bytes })
    }

    /// `HEAD /v2/<repo>/manifests/<reference>`: digest, media type and size; `None` on 404.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<(Digest, String, u64)>, ClientError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let req = Req::new(Method::HEAD, url, vec![scope(repo, "pull")]).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(&req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.error_for(resp, || self.describe("manifest", repo, reference)).await);
        }
        let h = resp.headers();
        let digest = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => header_str(h, "docker-content-digest").and_then(|d| d.parse().ok()),
        };
        let size = header_u64(h, "content-length");
        let ct = specific(content_type(h));
        match (digest, size, ct) {
            (Some(d), Some(s), Some(ct)) => Ok(Some((d, ct, s))),
            // The registry did not say enough: fetch and compute.
            _ => match self.get_manifest(repo, reference).await {
                Ok(m) => Ok(Some((m.digest, m.media_type, m.bytes.len() as u64))),
                Err(ClientError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the bytes unchanged; returns their digest.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, ClientError> {
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::compute(d.algorithm(), &bytes);
                if actual != *d {
                    return Err(ClientError::DigestMismatch { expected: d.clone(), actual });
                }
                actual
            }
            Reference::Tag(_) => Digest::compute(Algorithm::Sha256, &bytes),
        };
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let req = Req::new(Method::PUT, url, vec![scope(repo, "pull,push")])
            .header(CONTENT_TYPE, media_type)
            .body(bytes);
        let resp = self.send(&req).await?;
        if !resp.status().is_success() {
            return Err(self
                .error_for(resp, || self.describe("repository for manifest", repo, reference))
                .await);
        }
        if let Some(answered) =
            header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse::<Digest>().ok())
            && answered.algorithm() == digest.algorithm()
            && answered != digest
        {
            return Err(ClientError::Invalid(format!(
                "registry {} stored manifest {} as {answered}, not as the digest of the bytes sent \
                     ({digest}): it changed the manifest",
                self.inner.host,
                at(repo, reference)
            )));
        }
        Ok(digest)
    }

    /// `DELETE /v2/<repo>/manifests/<reference>`.
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<(), ClientError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}")).await?;
        let resp = self.send(&Req::new(Method::DELETE, url, vec![scope(repo, "pull,push,delete")])).await?;
        if !resp.status().is_success() {
            return Err(self.error_for(resp, || self.describe("manifest", repo, reference)).await);
        }
        Ok(())
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: the size, or `None` on 404.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>, ClientError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}")).await?;
        let resp = self.send(&Req::new(Method::HEAD, url, vec![scope(repo, "pull")])).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            let host = self.inner.host.clone();
            return Err(self.error_for(resp, || format!("blob {repo}@{digest} on {host}")).await);
        }
        match header_u64(resp.headers(), "content-length") {
            Some(n) => Ok(Some(n)),
            None => Err(ClientError::Invalid(format!(
                "registry {} answered HEAD of blob {digest} without Content-Length",
                self.inner.host
            ))),
        }
    }

    /// Cross-repository mount: `POST /v2/<repo>/blobs/uploads/?mount=<digest>&from=<from>`.
    /// `Ok(true)` when mounted (201); `Ok(false)` when the registry opened an upload instead
    /// (202), which is cancelled at once.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<bool, ClientError> {
        match self.mount_or_start(repo, digest, from).await? {
            Mounted::Yes => Ok(true),
            Mounted::No(session) => {
                self.cancel_upload(repo, session.location.as_str()).await;
                Ok(false)
            }
        }
    }

    /// A mount that keeps what the registry offers instead: mounted (201), or the upload
    /// session it opened (202), to pass to [`RegistryClient::push_blob_in`]. With `from`
    /// equal to `repo` this asks in one request what a `HEAD` and a `POST` would: whether the
    /// repository holds the blob, and if not, where to upload it.
    pub async fn mount_or_start(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<Mounted, ClientError> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/")).await?;
        url.query_pairs_mut().append_pair("mount", &digest.to_string()).append_pair("from", from.as_str());
        let mut scopes = vec![scope(repo, "pull,push")];
        if from != repo {
            scopes.push(scope(from, "pull"));
        }
        let resp = self.send(&Req::new(Method::POST, url.clone(), scopes)).await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mounted::Yes),
            StatusCode::ACCEPTED => Ok(Mounted::No(self.session_of(&url, &resp)?)),
            _ => {
                let host = self.inner.host.clone();
                Err(self.error_for(resp, || format!("repository {repo} on {host}")).await)
            }
        }
    }

    /// Best-effort `DELETE` of an upload session (nothing should leak; failure is only logged).
    pub(crate) async fn cancel_upload(&self, repo: &RepoName, location: &str) {
        let Ok(url) = self.url(location).await else { return };
        match self.send(&Req::new(Method::DELETE, url, vec![scope(repo, "pull,push")])).await {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => {
                tracing::debug!(registry = %self.inner.host, status = %r.status(), "could not cancel an upload")
            }
            Err(e) => tracing::debug!(registry = %self.inner.host, error = %e, "could not cancel an upload"),
        }
    }

    /// Every tag of `repo`, following `Link` pagination (`n=1000`).
    pub async fn list_tags(&self, repo: &RepoName) -> Result<Vec<String>, ClientError> {
        self.list_tags_paged(repo, 1000).await
    }

    /// [`RegistryClient::list_tags`] with another page size.
    pub async fn list_tags_paged(&self, repo: &RepoName, page_size: u32) -> Result<Vec<String>, ClientError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(&format!("/v2/{repo}/tags/list?n={page_size}")).await?;
        let mut tags = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            seen.insert(url.to_string());
            let resp = self.send(&Req::new(Method::GET, url.clone(), vec![scope(repo, "pull")])).await?;
            if !resp.status().is_success() {
                let host = self.inner.host.clone();
                return Err(self.error_for(resp, || format!("repository {repo} on {host}")).await);
            }
            let next = header_str(resp.headers(), LINK.as_str()).and_then(next_link);
            let body = read_limited(resp, 64 * 1024 * 1024).await?;
            let page: TagList = serde_json::from_slice(&body).map_err(|e| {
                ClientError::Invalid(format!(
                    "tag list of {repo} on {} is not valid JSON: {e}",
                    self.inner.host
                ))
            })?;
            tags.extend(page.tags.unwrap_or_default());
            match next_page(&url, next, &seen)? {
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(tags)
    }

    /// `GET /v2/<repo>/referrers/<digest>`: `Some(descriptors)` when the registry has the
    /// referrers API, `None` when it does not (404 or any other non-index answer): then the
    /// caller falls back to the referrers tag schema. Filters by `artifact_type` client-side when
    /// the registry did not (`OCI-Filters-Applied`).
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Vec<Descriptor>>, ClientError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Index {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<Vec<Descriptor>>,
        }
        let mut url = self.url(&format!("/v2/{repo}/referrers/{digest}")).await?;
        if let Some(a) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", a);
        }
        let mut out = Vec::new();
        let mut filtered_by_server = true;
        let mut seen = std::collections::HashSet::new();
        for page in 0..MAX_PAGES {
            seen.insert(url.to_string());
            let req = Req::new(Method::GET, url.clone(), vec![scope(repo, "pull")])
                .header(ACCEPT, media_types::OCI_INDEX);
            let resp = self.send(&req).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                || status == StatusCode::FORBIDDEN
                || status.is_server_error()
            {
                let host = self.inner.host.clone();
                return Err(self.error_for(resp, || format!("referrers of {repo}@{digest} on {host}")).await);
            }
            if !status.is_success() {
                if page == 0 {
                    tracing::debug!(registry = %self.inner.host, %status, "no referrers API");
                    return Ok(None);
                }
                let host = self.inner.host.clone();
                return Err(self.error_for(resp, || format!("referrers of {repo}@{digest} on {host}")).await);
            }
            let ct = content_type(resp.headers());
            let applied = header_str(resp.headers(), "oci-filters-applied").unwrap_or("").to_owned();
            if !applied.split(',').any(|f| f.trim() == "artifactType") {
                filtered_by_server = false;
            }
            let next = header_str(resp.headers(), LINK.as_str()).and_then(next_link);
            let body = read_limited(resp, MAX_MANIFEST_BYTES).await?;
            let index: Option<Index> = serde_json::from_slice(&body).ok();
            let index = index.filter(|i| {
                i.schema_version == Some(2)
                    && i.media_type.as_deref().unwrap_or(media_types::OCI_INDEX) == media_types::OCI_INDEX
                    && ct.as_deref().is_none_or(|c| c == media_types::OCI_INDEX || c == "application/json")
            });
            let Some(index) = index else {
                if page == 0 {
                    tracing::debug!(registry = %self.inner.host, "referrers endpoint answered something other than an index");
                    return Ok(None);
                }
                return Err(ClientError::Invalid(format!(
                    "referrers page of {repo}@{digest} on {} is not an OCI index",
                    self.inner.host
                )));
            };
            out.extend(index.manifests.unwrap_or_default());
            match next_page(&url, next, &seen)? {
                Some(n) => url = n,
                None => break,
            }
        }
        if let (Some(a), false) = (artifact_type, filtered_by_server) {
            out.retain(|d| d.artifact_type.as_deref() == Some(a));
        }
        Ok(Some(out))
    }

    /// A plain authenticated `GET` of `path_and_query` (e.g. `/v2/<name>/_wharf/...`):
    /// status, media type and body (at most 64 MiB), whatever the status.
    pub async fn get_raw(&self, path_and_query: &str) -> Result<(u16, Option<String>, Bytes), ClientError> {
        if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
            return Err(ClientError::Invalid(format!(
                "get_raw takes a path starting with one '/', not {path_and_query:?}"
            )));
        }
        let url: Url = self.url(path_and_query).await?;
        let scopes = repo_of_path(url.path()).map(|r| vec![scope(&r, "pull")]).unwrap_or_default();
        let resp = self.send(&Req::new(Method::GET, url, scopes)).await?;
        let status = resp.status().as_u16();
        let ct = content_type(resp.headers());
        let body = read_limited(resp, 64 * 1024 * 1024).await?;
        Ok((status, ct, body))
    }
}

impl RegistryClient {
    /// A plain authenticated `POST` of `path_and_query` without a body (e.g.
    /// `/v2/_wharf/mirrors/<name>/run`): status, media type and body (at most 1 MiB),
    /// whatever the status. Token scopes come from the registry's challenge.
    pub async fn post_raw(&self, path_and_query: &str) -> Result<(u16, Option<String>, Bytes), ClientError> {
        if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
            return Err(ClientError::Invalid(format!(
                "post_raw takes a path starting with one '/', not {path_and_query:?}"
            )));
        }
        let url: Url = self.url(path_and_query).await?;
        let req = Req::new(Method::POST, url, Vec::new()).body(Bytes::new());
        let resp = self.send(&req).await?;
        let status = resp.status().as_u16();
        let ct = content_type(resp.headers());
        let body = read_limited(resp, 1024 * 1024).await?;
        Ok((status, ct, body))
    }
}

/// The repository of a `/v2/<name>/<endpoint>/...` path, to ask for the right token scope.
fn repo_of_path(path: &str) -> Option<RepoName> {
    let rest = path.strip_prefix("/v2/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let end = parts
        .iter()
        .position(|p| matches!(*p, "manifests" | "blobs" | "tags" | "referrers") || p.starts_with('_'))?;
    parts[..end].join("/").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/a/tags/list?last=x&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=x&n=2")
        );
        assert_eq!(
            next_link(r#"<https://r/v2/a/tags/list?n=2&last=b>; rel="prev", <https://r/v2/a/tags/list?n=2&last=d>;rel=next"#)
                .as_deref(),
            Some("https://r/v2/a/tags/list?n=2&last=d")
        );
        assert_eq!(next_link("garbage"), None);
        assert_eq!(next_link(r#"<x>; rel="prev""#), None);
    }

    #[test]
    fn repo_from_extension_paths() {
        assert_eq!(repo_of_path("/v2/mirror/app/_wharf/index/sha256:ab").unwrap().as_str(), "mirror/app");
        assert_eq!(repo_of_path("/v2/a/tags/list").unwrap().as_str(), "a");
        assert!(repo_of_path("/v2/_catalog").is_none());
        assert!(repo_of_path("/metrics").is_none());
    }

    #[test]
    fn media_type_fallbacks() {
        assert_eq!(media_type_from_body(br#"{"manifests":[]}"#), media_types::OCI_INDEX);
        assert_eq!(media_type_from_body(br#"{"mediaType":"x","config":{}}"#), "x");
        assert_eq!(specific(Some("application/json".into())), None);
        assert_eq!(at(&"a/b".parse().unwrap(), &"v1".parse().unwrap()), "a/b:v1");
    }
}
