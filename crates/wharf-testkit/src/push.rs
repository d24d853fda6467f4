//! A small plain-HTTP registry client for tests: push blobs (monolithic POST + PUT), manifests
//! by digest, indexes by tag; read manifests back. Optional basic auth (sent preemptively).

use std::collections::BTreeSet;

use reqwest::{Method, RequestBuilder, StatusCode};

use crate::image::{Blob, ImageChild, Manifest, TestImage, media_type};
use crate::sign::Artifact;

/// Every media type a test may want back from `GET /v2/<name>/manifests/<ref>`.
pub const ACCEPT_ALL_MANIFESTS: &[&str] =
    &[media_type::OCI_INDEX, media_type::OCI_MANIFEST, media_type::DOCKER_LIST, media_type::DOCKER_MANIFEST];

/// A failed request: transport error, or an unexpected status with the response body.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Status { method: Method, url: String, status: StatusCode, body: String },
    #[error("{0}")]
    Protocol(String),
}

impl PushError {
    /// The HTTP status, when the registry answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            PushError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The response body, when the registry answered with an unexpected status.
    pub fn body(&self) -> Option<&str> {
        match self {
            PushError::Status { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// A registry on plain HTTP, e.g. a [`crate::Distribution`] or a Wharf server in a test.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
}

impl RegistryClient {
    /// `addr` is `HOST:PORT` (plain HTTP) or a URL `http://HOST:PORT`.
    pub fn new(addr: &str) -> Self {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{addr}")
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("build reqwest client");
        RegistryClient { base, http, credentials: None }
    }

    /// Sends basic auth with every request; against a registry that answers with a `Bearer`
    /// challenge, uses these credentials to get a token from its realm instead.
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// `http://HOST:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The underlying reqwest client, for requests this helper does not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to `path` (starting with `/v2/`) or to an absolute URL, with credentials.
    pub fn request(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{}", self.base, path_or_url)
        };
        let req = self.http.request(method, url);
        match &self.credentials {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    async fn execute(&self, req: reqwest::Request) -> Result<reqwest::Response, PushError> {
        let (method, url) = (req.method().clone(), req.url().to_string());
        self.http.execute(req).await.map_err(|source| PushError::Transport { method, url, source })
    }

    /// Sends the request; on `401` with a `Bearer` challenge, gets a token from the realm (with
    /// the basic credentials, if any) and sends it again once.
    async fn send(&self, req: RequestBuilder, ok: &[StatusCode]) -> Result<reqwest::Response, PushError> {
        let req = req.build().map_err(|e| PushError::Protocol(e.to_string()))?;
        let (method, url) = (req.method().clone(), req.url().to_string());
        let retry = req.try_clone();
        let mut resp = self.execute(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && !ok.contains(&StatusCode::UNAUTHORIZED) {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_challenge);
            if let (Some(challenge), Some(mut retry)) = (challenge, retry) {
                let token = self.fetch_token(&challenge).await?;
                let value = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| PushError::Protocol("token is not a header value".into()))?;
                retry.headers_mut().insert(reqwest::header::AUTHORIZATION, value);
                resp = self.execute(retry).await?;
            }
        }
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(PushError::Status { method, url, status, body })
    }

    async fn fetch_token(&self, challenge: &[(String, String)]) -> Result<String, PushError> {
        let param = |k: &str| challenge.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm =
            param("realm").ok_or_else(|| PushError::Protocol("Bearer challenge without realm".into()))?;
        let mut query = Vec::new();
        for k in ["service", "scope"] {
            if let Some(v) = param(k) {
                query.push((k, v));
            }
        }
        let mut req = self.http.get(&realm).query(&query);
        if let Some((u, p)) = &self.credentials {
            req = req.basic_auth(u, Some(p));
        }
        let req = req.build().map_err(|e| PushError::Protocol(e.to_string()))?;
        let (method, url) = (req.method().clone(), req.url().to_string());
        let resp = self.execute(req).await?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status != StatusCode::OK {
            return Err(PushError::Status { method, url, status, body });
        }
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| PushError::Protocol(format!("token response is not JSON: {e}")))?;
        json["token"]
            .as_str()
            .or_else(|| json["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| PushError::Protocol("token response has no token".into()))
    }

    /// `GET /v2/`: the status code (200, or 401 when auth is required and not given).
    pub async fn ping(&self) -> Result<StatusCode, PushError> {
        let resp =
            self.send(self.request(Method::GET, "/v2/"), &[StatusCode::OK, StatusCode::UNAUTHORIZED]).await?;
        Ok(resp.status())
    }

    /// `HEAD /v2/<repo>/blobs/<digest>`: whether the blob is readable in `repo`.
    pub async fn blob_exists(&self, repo: &str, digest: &str) -> Result<bool, PushError> {
        let resp = self
            .send(
                self.request(Method::HEAD, &format!("/v2/{repo}/blobs/{digest}")),
                &[StatusCode::OK, StatusCode::NOT_FOUND],
            )
            .await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Uploads `blob` monolithically (POST, then PUT `?digest=` with the whole body), always,
    /// even if the registry has it.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> Result<(), PushError> {
        let resp = self
            .send(self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")), &[StatusCode::ACCEPTED])
            .await?;
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| PushError::Protocol("upload POST answered no Location".into()))?;
        let location =
            if location.starts_with('/') { format!("{}{location}", self.base) } else { location.to_owned() };
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", blob.digest);
        self.send(
            self.request(Method::PUT, &url)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(blob.bytes.clone()),
            &[StatusCode::CREATED],
        )
        .await?;
        Ok(())
    }

    /// Uploads `blob` unless `HEAD` says `repo` already has it.
    pub async fn ensure_blob(&self, repo: &str, blob: &Blob) -> Result<(), PushError> {
        if !self.blob_exists(repo, &blob.digest).await? {
            self.push_blob(repo, blob).await?;
        }
        Ok(())
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with the manifest's media type as Content-Type.
    /// Returns the `Docker-Content-Digest` the registry answered (or the manifest's digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<String, PushError> {
        let resp = self
            .send(
                self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                    .header(reqwest::header::CONTENT_TYPE, &manifest.media_type)
                    .body(manifest.bytes.clone()),
                &[StatusCode::CREATED],
            )
            .await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| manifest.digest.clone()))
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest type: (media type, bytes).
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<(String, Vec<u8>), PushError> {
        let resp = self
            .send(
                self.request(Method::GET, &format!("/v2/{repo}/manifests/{reference}"))
                    .header(reqwest::header::ACCEPT, ACCEPT_ALL_MANIFESTS.join(", ")),
                &[StatusCode::OK],
            )
            .await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = resp.bytes().await.map_err(|e| PushError::Protocol(e.to_string()))?;
        Ok((media_type, bytes.to_vec()))
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<Vec<u8>, PushError> {
        let resp = self
            .send(self.request(Method::GET, &format!("/v2/{repo}/blobs/{digest}")), &[StatusCode::OK])
            .await?;
        let bytes = resp.bytes().await.map_err(|e| PushError::Protocol(e.to_string()))?;
        Ok(bytes.to_vec())
    }

    /// A platform image (or attestation manifest): its blobs (skipping those present), then its
    /// manifest by digest.
    pub async fn push_child(&self, repo: &str, child: &ImageChild) -> Result<(), PushError> {
        for blob in child.blobs() {
            self.ensure_blob(repo, blob).await?;
        }
        self.push_manifest(repo, &child.manifest.digest, &child.manifest).await?;
        Ok(())
    }

    /// The whole image: every child (blobs, then manifest by digest), then the index by tag.
    pub async fn push_image(&self, repo: &str, image: &TestImage) -> Result<(), PushError> {
        let mut done = BTreeSet::new();
        for child in &image.children {
            for blob in child.blobs() {
                if done.insert(blob.digest.clone()) {
                    self.ensure_blob(repo, blob).await?;
                }
            }
            self.push_manifest(repo, &child.manifest.digest, &child.manifest).await?;
        }
        self.push_index(repo, image).await?;
        Ok(())
    }

    /// Only the platform images named (as `os/arch[/variant]`, see [`TestImage::platform`]) and
    /// their attestation manifests, by digest; not the index.
    pub async fn push_platforms(
        &self,
        repo: &str,
        image: &TestImage,
        platforms: &[&str],
    ) -> Result<(), PushError> {
        for p in platforms {
            let child = image.platform(p);
            self.push_child(repo, child).await?;
            if let Some(att) = image.attestation_of(&child.manifest.digest) {
                self.push_child(repo, att).await?;
            }
        }
        Ok(())
    }

    /// The index alone, by tag. Returns the digest the registry answered.
    pub async fn push_index(&self, repo: &str, image: &TestImage) -> Result<String, PushError> {
        self.push_manifest(repo, &image.tag, &image.index).await
    }

    /// A signature or SBOM artifact: its blobs, then its manifest by tag (cosign's tag scheme)
    /// or by digest when it has no tag.
    pub async fn push_artifact(&self, repo: &str, artifact: &Artifact) -> Result<(), PushError> {
        for blob in &artifact.blobs {
            self.ensure_blob(repo, blob).await?;
        }
        let reference = artifact.tag.as_deref().unwrap_or(&artifact.manifest.digest);
        self.push_manifest(repo, reference, &artifact.manifest).await?;
        Ok(())
    }
}

/// The parameters of a `Bearer k="v",k="v"` challenge (values may hold commas).
fn bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let rest = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer "))?;
    let mut params = Vec::new();
    let mut chars = rest.trim().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => v.extend(chars.next()),
                    '"' => break,
                    c => v.push(c),
                }
            }
            v
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        params.push((key.trim().to_owned(), value));
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let p = bearer_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("realm".to_owned(), "http://127.0.0.1:1/token".to_owned()),
                ("service".to_owned(), "reg".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
        assert!(bearer_challenge(r#"Basic realm="x""#).is_none());
    }
}
