//! The client core: scheme choice, request sending with auth and retries, error mapping.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Response, StatusCode, Url};

use crate::ClientError;
use crate::auth::AuthState;
use crate::credentials::Credentials;
use crate::error::{body_text, http_error, parse_errors};

/// Default size above which blobs are uploaded in chunks, and the size of each chunk.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 * 1024 * 1024;

/// How a [`RegistryClient`] talks to its registry.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Verify TLS certificates. When false, invalid certificates are accepted and plain HTTP is
    /// used if an HTTPS probe of `/v2/` fails. Loopback registries (`localhost`, `127.x.y.z`,
    /// `[::1]`) are probed whatever this says: plain HTTP first, then HTTPS.
    pub tls_verify: bool,
    /// Used for basic auth and for token requests; `None` is anonymous.
    pub credentials: Option<Credentials>,
    pub user_agent: String,
    /// Retries after the first attempt on 429, 502, 503, 504 and dropped connections
    /// (backoff 200 ms, doubling, at most 10 s between tries).
    pub max_retries: u32,
    /// Blobs larger than this are uploaded with chunked `PATCH`es of this size (raised to the
    /// registry's `OCI-Chunk-Min-Length` if it asks for more).
    pub chunk_size: u64,
    /// A directory of extra CA certificates (`*.crt`, PEM) to trust, as skopeo's and podman's
    /// `--cert-dir`: for registries behind a private CA.
    pub cert_dir: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls_verify: true,
            credentials: None,
            user_agent: concat!("wharf/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_retries: 5,
            chunk_size: DEFAULT_CHUNK_SIZE,
            cert_dir: None,
        }
    }
}

/// What `GET /v2/` said besides "yes, a registry".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PingInfo {
    /// `X-Sparse-Manifest-Support: true|false`, `None` when absent.
    pub sparse_manifest_support: Option<bool>,
    /// `Docker-Distribution-API-Version`, e.g. `registry/2.0`.
    pub distribution_api_version: Option<String>,
}

/// An HTTP client for one registry host. Clones share connections, scheme and tokens.
#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub host: String,
    pub options: ClientOptions,
    pub http: reqwest::Client,
    base: tokio::sync::OnceCell<Url>,
    pub auth: tokio::sync::Mutex<AuthState>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("host", &self.inner.host)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// A request that can be sent again (retries, auth challenge): no streamed body.
pub(crate) struct Req {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub scopes: Vec<String>,
}

impl Req {
    pub fn new(method: Method, url: Url, scopes: Vec<String>) -> Self {
        Req { method, url, headers: HeaderMap::new(), body: None, scopes }
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    pub fn body(mut self, body: Bytes) -> Self {
        self.body = Some(body);
        self
    }
}

/// `repository:REPO:ACTIONS`.
pub(crate) fn scope(repo: &impl fmt::Display, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

/// Is `host` (`HOST[:PORT]`) a loopback name or address (`localhost`, `127.x.y.z`, `[::1]`)?
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or("")
    } else {
        host
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

impl RegistryClient {
    /// A client for `host` (`HOST[:PORT]`, no scheme). No request is made yet.
    pub fn new(host: &str, options: ClientOptions) -> Result<Self, ClientError> {
        let valid = !host.is_empty()
            && !host.contains("://")
            && !host.contains(['/', '@', '?', '#', ' '])
            && Url::parse(&format!("https://{host}/")).is_ok();
        if !valid {
            return Err(ClientError::Invalid(format!(
                "registry host {host:?} is invalid: expected HOST[:PORT] without a scheme or path"
            )));
        }
        // `docker.io` names Docker Hub's images; its API answers on another host.
        let host =
            if host == "docker.io" || host == "index.docker.io" { "registry-1.docker.io" } else { host };
        let mut builder = reqwest::Client::builder();
        if is_loopback_host(host) {
            // A proxy from the environment must not capture a registry on this machine.
            builder = builder.no_proxy();
        }
        if let Some(dir) = &options.cert_dir {
            for cert in ca_certificates(dir)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .use_rustls_tls()
            .danger_accept_invalid_certs(!options.tls_verify)
            .connect_timeout(Duration::from_secs(10))
            // Per read, not overall: a stalled connection fails, a long blob does not.
            .read_timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(options.user_agent.clone())
            .build()
            .map_err(|e| http_error("cannot build the HTTP client", &e))?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                options,
                http,
                base: tokio::sync::OnceCell::new(),
                auth: tokio::sync::Mutex::new(AuthState::default()),
            }),
        })
    }

    pub fn host(&self) -> &str {
        &self.inner.host
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// `https://HOST/` or `http://HOST/`, decided once.
    pub(crate) async fn base(&self) -> Result<&Url, ClientError> {
        self.inner.base.get_or_try_init(|| self.choose_scheme()).await
    }

    /// HTTPS, except for loopback registries and with TLS verification off, where `/v2/` is
    /// probed over both. Loopback (where plain HTTP is the norm) tries plain HTTP first: one
    /// `GET /v2/` without credentials, and no TLS handshake that a plain server might never
    /// answer. A plain-HTTP answer of 400 is a TLS port refusing plain HTTP (Wharf, Go, nginx
    /// answer so), not a registry.
    async fn choose_scheme(&self) -> Result<Url, ClientError> {
        let host = &self.inner.host;
        let parse = |scheme: &str| {
            Url::parse(&format!("{scheme}://{host}/"))
                .map_err(|e| ClientError::Invalid(format!("registry host {host:?}: {e}")))
        };
        let loopback = is_loopback_host(host);
        if self.inner.options.tls_verify && !loopback {
            return parse("https");
        }
        let (https, http) = (parse("https")?, parse("http")?);
        let reason = |e: reqwest::Error| http_error("", &e).to_string().trim_start_matches(": ").to_owned();
        let try_https =
            async || match self.inner.http.get(https.join("/v2/").expect("static path")).send().await {
                Ok(_) => Ok(()), // any answer will do
                Err(e) => Err(reason(e)),
            };
        let try_http =
            async || match self.inner.http.get(http.join("/v2/").expect("static path")).send().await {
                Ok(resp) if resp.status() == StatusCode::BAD_REQUEST => {
                    Err("it refuses plain HTTP: HTTP 400".to_owned())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(reason(e)),
            };
        let (https_err, http_err) = if loopback {
            let http_err = match try_http().await {
                Ok(()) => return Ok(http),
                Err(e) => e,
            };
            match try_https().await {
                Ok(()) => return Ok(https),
                Err(e) => (e, http_err),
            }
        } else {
            // TLS verification is off: HTTPS first, then plain HTTP.
            let https_err = match try_https().await {
                Ok(()) => return Ok(https),
                Err(e) => e,
            };
            match try_http().await {
                Ok(()) => {
                    tracing::info!(%host, "HTTPS failed and TLS verification is off: using plain HTTP");
                    return Ok(http);
                }
                Err(e) => (https_err, e),
            }
        };
        let hint = if self.inner.options.tls_verify && https_err.contains("certificate") {
            "; if its certificate is self-signed or from a private CA, turn TLS verification off"
        } else {
            ""
        };
        Err(ClientError::Http(format!(
            "cannot reach registry {host} over HTTPS ({https_err}) or HTTP ({http_err}){hint}"
        )))
    }

    /// An absolute URL for a path such as `/v2/...` (or a `Location` header, relative or not).
    pub(crate) async fn url(&self, path_or_url: &str) -> Result<Url, ClientError> {
        let base = self.base().await?;
        base.join(path_or_url).map_err(|e| {
            ClientError::Invalid(format!("bad URL {path_or_url:?} from or for {}: {e}", self.inner.host))
        })
    }

    pub(crate) async fn same_origin(&self, url: &Url) -> bool {
        match self.base().await {
            Ok(base) => base.origin() == url.origin(),
            Err(_) => false,
        }
    }

    /// Send a replayable request: authenticate on a challenge (once), retry transient failures.
    /// Returns the final response whatever its status.
    pub(crate) async fn send(&self, req: &Req) -> Result<Response, ClientError> {
        let max = self.inner.options.max_retries;
        let mut scopes = req.scopes.clone();
        let mut challenged = false;
        let mut attempt = 0u32;
        let same_origin = self.same_origin(&req.url).await;
        loop {
            let auth = if same_origin { self.authorization(&scopes).await? } else { None };
            let mut rb =
                self.inner.http.request(req.method.clone(), req.url.clone()).headers(req.headers.clone());
            if let Some(a) = &auth {
                rb = rb.header(AUTHORIZATION, a.clone());
            }
            match &req.body {
                Some(b) => rb = rb.body(b.clone()),
                None if matches!(req.method, Method::POST | Method::PUT | Method::PATCH) => {
                    rb = rb.header(CONTENT_LENGTH, "0").body(Bytes::new())
                }
                None => {}
            }
            match rb.send().await {
                Err(e) if is_transient(&e) && attempt < max => {
                    attempt += 1;
                    let delay = backoff(attempt);
                    tracing::warn!(
                        registry = %self.inner.host, method = %req.method, path = req.url.path(),
                        error = %e, attempt, "request failed; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    return Err(http_error(
                        &format!("{} {} on {}", req.method, req.url.path(), self.inner.host),
                        &e,
                    ));
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !challenged && same_origin {
                        challenged = true;
                        scopes = self.handle_challenge(&resp, &scopes, auth.is_some()).await?;
                        continue;
                    }
                    if is_retry_status(status) && attempt < max {
                        attempt += 1;
                        let delay = retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt));
                        tracing::warn!(
                            registry = %self.inner.host, method = %req.method, path = req.url.path(),
                            %status, attempt, "registry busy; retrying in {delay:?}"
                        );
                        drop(resp);
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// Send a request whose body is a stream (sent once, never replayed). The scope's
    /// credentials are attached up front (the registry has already challenged us on the
    /// request that opened the upload).
    pub(crate) async fn send_streamed(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: reqwest::Body,
        scopes: &[String],
    ) -> Result<Response, reqwest::Error> {
        let auth =
            if self.same_origin(&url).await { self.authorization(scopes).await.ok().flatten() } else { None };
        let mut rb = self.inner.http.request(method, url).headers(headers).body(body);
        if let Some(a) = auth {
            rb = rb.header(AUTHORIZATION, a);
        }
        rb.send().await
    }

    /// The error for an unsuccessful answer; `what` names the thing for a 404.
    pub(crate) async fn error_for(&self, resp: Response, what: impl FnOnce() -> String) -> ClientError {
        let status = resp.status();
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        let errors = parse_errors(&body);
        let registry = self.inner.host.clone();
        match status {
            StatusCode::NOT_FOUND => ClientError::NotFound {
                what: what(),
                message: errors.first().map(|e| e.message.clone()).filter(|m| !m.is_empty()),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let detail = if errors.is_empty() {
                    let t = body_text(&body);
                    if t.trim().is_empty() { format!("HTTP {status}") } else { t.trim().to_owned() }
                } else {
                    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
                };
                let hint = match &self.inner.options.credentials {
                    Some(c) => format!(" (as user {:?})", c.username),
                    None => " (anonymously: no credentials were given or found)".to_owned(),
                };
                ClientError::Unauthorized { registry, message: format!("{detail}{hint}") }
            }
            _ => ClientError::Registry { status: status.as_u16(), registry, errors, body: body_text(&body) },
        }
    }

    /// `GET /v2/`: is this a registry, and what does it announce.
    pub async fn ping(&self) -> Result<PingInfo, ClientError> {
        let url = self.url("/v2/").await?;
        let resp = self.send(&Req::new(Method::GET, url, Vec::new())).await?;
        if !resp.status().is_success() {
            let host = self.inner.host.clone();
            return Err(self.error_for(resp, || format!("registry API /v2/ on {host}")).await);
        }
        let h = resp.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned());
        let sparse = text("x-sparse-manifest-support").and_then(|v| match v.to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
        Ok(PingInfo {
            sparse_manifest_support: sparse,
            distribution_api_version: text("docker-distribution-api-version"),
        })
    }
}

/// Read a body of at most `limit` bytes; more is an error (a hostile or broken peer).
pub(crate) async fn read_limited(mut resp: Response, limit: usize) -> Result<Bytes, ClientError> {
    if let Some(len) = header_u64(resp.headers(), CONTENT_LENGTH.as_str())
        && len > limit as u64
    {
        return Err(ClientError::Invalid(format!(
            "answer of {len} bytes is larger than the {limit} bytes expected"
        )));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_error("reading the answer", &e))? {
        if buf.len() + chunk.len() > limit {
            return Err(ClientError::Invalid(format!("answer is larger than the {limit} bytes expected")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// A numeric header. For HEAD answers this is the only way to the size: reqwest's
/// `content_length()` reports the (empty) body.
pub(crate) fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    header_str(h, name)?.parse().ok()
}

/// The media type of `Content-Type`, without parameters.
pub(crate) fn content_type(h: &HeaderMap) -> Option<String> {
    header_str(h, CONTENT_TYPE.as_str())
        .map(|c| c.split(';').next().unwrap_or("").trim().to_owned())
        .filter(|c| !c.is_empty())
}

pub(crate) fn is_transient(e: &reqwest::Error) -> bool {
    !(e.is_builder() || e.is_redirect() || e.is_status() || e.is_decode())
}

pub(crate) fn is_retry_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 502 | 503 | 504)
}

/// 200 ms, 400 ms, 800 ms, ... at most 10 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ms = 200u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(10_000))
}

/// `Retry-After: SECONDS`, capped at 30 s. (HTTP-date values fall back to the backoff.)
pub(crate) fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = header_str(h, RETRY_AFTER.as_str())?.parse().ok()?;
    Some(Duration::from_secs(secs.min(30)))
}

/// The CA certificates of a `--cert-dir`: every `*.crt` file, each a PEM bundle. Client
/// certificates (`*.cert`/`*.key` in skopeo's layout) are not supported and are ignored.
fn ca_certificates(dir: &std::path::Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| ClientError::Invalid(format!("certificate directory {}: {e}", dir.display())))?;
    let mut paths: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    let mut certs = Vec::new();
    for path in paths {
        let pem = std::fs::read(&path)
            .map_err(|e| ClientError::Invalid(format!("certificate file {}: {e}", path.display())))?;
        let bundle = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ClientError::Invalid(format!("certificate file {} is not PEM: {e}", path.display()))
        })?;
        if bundle.is_empty() {
            return Err(ClientError::Invalid(format!(
                "certificate file {} holds no certificate",
                path.display()
            )));
        }
        certs.extend(bundle);
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_is_reached_on_its_api_host() {
        let c = RegistryClient::new("docker.io", ClientOptions::default()).unwrap();
        assert_eq!(c.host(), "registry-1.docker.io");
        let c = RegistryClient::new("127.0.0.1:5000", ClientOptions::default()).unwrap();
        assert_eq!(c.host(), "127.0.0.1:5000");
    }

    #[test]
    fn cert_dir_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ca_certificates(&dir.path().join("missing")).is_err());
        assert!(ca_certificates(dir.path()).unwrap().is_empty(), "an empty directory adds nothing");
        std::fs::write(dir.path().join("ignored.key"), b"not a certificate").unwrap();
        assert!(ca_certificates(dir.path()).unwrap().is_empty(), "only *.crt files are read");
        std::fs::write(dir.path().join("ca.crt"), b"not a certificate").unwrap();
        let err = ca_certificates(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:5000",
            "::1",
            "a.localhost:1",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "[fe80::1]:5000", "localhost.example.com"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn rejects_bad_hosts() {
        let o = ClientOptions::default;
        for h in ["", "http://x", "x/y", "u@x", "x y"] {
            assert!(RegistryClient::new(h, o()).is_err(), "{h:?}");
        }
        assert_eq!(RegistryClient::new("reg.example:5000", o()).unwrap().host(), "reg.example:5000");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(40), Duration::from_secs(10));
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
    }

    #[test]
    fn debug_has_no_password() {
        let o = ClientOptions { credentials: Some(Credentials::new("u", "topsecret")), ..Default::default() };
        let c = RegistryClient::new("r.example", o).unwrap();
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
