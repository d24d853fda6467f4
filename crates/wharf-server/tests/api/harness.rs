//! Starts a real Wharf server in-process on 127.0.0.1:0 and talks to it over HTTP.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wharf_metadata::MetadataStore;
use wharf_oci::Digest;
use wharf_registry::{Registry, RegistryConfig};
use wharf_server::wharf_auth::{AuthConfig, Authority};
use wharf_storage::BlobStore;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Two replicas, each with its own stores (connection pools, upload state, caches) over one
    /// Garage bucket and one PostgreSQL schema, behind nginx round-robin: every other request
    /// reaches the other replica.
    Replicas,
}

pub struct Server {
    /// Where requests go: the registry, or the balancer in front of the replicas.
    pub base: String,
    pub client: reqwest::Client,
    /// The (first) replica's registry.
    pub registry: Registry,
    /// Each replica's own address (one, unless [`Backend::Replicas`]).
    pub replicas: Vec<String>,
    _dir: tempfile::TempDir,
    shutdown: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Kept alive for the test: nginx first, so it goes before what it balances.
    _nginx: Option<wharf_testkit::Nginx>,
    _garage: Option<wharf_testkit::Garage>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for tx in self.shutdown.drain(..) {
            let _ = tx.send(());
        }
    }
}

/// Makes the `[auth]` of a server under test; called once per replica, since each replica
/// builds its own from the same configuration.
pub type AuthFactory = fn() -> AuthConfig;

/// How a test server gets its [`Authority`]: from a configuration, or made whole (for
/// settings `[auth]` does not have, such as the login limits).
#[derive(Clone, Copy)]
enum MakeAuth {
    Config(AuthFactory),
    Authority(fn() -> Authority),
}

impl MakeAuth {
    fn make(self) -> Authority {
        match self {
            MakeAuth::Config(f) => Authority::new(f()),
            MakeAuth::Authority(f) => f(),
        }
    }
}

/// Serves `registry` on a fresh loopback port until the sender is used or dropped.
async fn serve(registry: Registry, auth: Option<MakeAuth>) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let authority = auth.map(MakeAuth::make);
    tokio::spawn(async move {
        wharf_server::serve_with_auth(listener, registry, authority, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (addr, tx)
}

/// Two replicas over a fresh Garage and one isolated PostgreSQL schema, behind nginx.
async fn start_replicas(dir: tempfile::TempDir, config: RegistryConfig, auth: Option<MakeAuth>) -> Server {
    let garage = tokio::task::spawn_blocking(wharf_testkit::Garage::start).await.unwrap();
    let s3 = wharf_storage::S3Config {
        bucket: garage.bucket.clone(),
        endpoint: Some(garage.endpoint.clone()),
        region: wharf_testkit::GARAGE_REGION.into(),
        prefix: "registry".into(),
        access_key_id: garage.access_key_id.clone(),
        secret_access_key: garage.secret_access_key.clone(),
        redirect: false,
    };
    let first_meta = MetadataStore::connect_postgres_isolated(&postgres_url())
        .await
        .expect("PostgreSQL must be reachable for the replica tests (set WHARF_TEST_POSTGRES)");
    let mut registries = Vec::new();
    let mut addrs = Vec::new();
    let mut shutdown = Vec::new();
    for i in 0..2 {
        let blobs = BlobStore::open_s3(s3.clone()).await.expect("the Garage bucket");
        // The second replica opens its own pool on the first one's schema.
        let meta = match i {
            0 => first_meta.clone(),
            _ => {
                let schema = first_meta.isolated_schema().expect("an isolated schema");
                MetadataStore::connect_postgres_schema(&postgres_url(), schema).await.unwrap()
            }
        };
        let registry = Registry::new(blobs, meta, config.clone());
        let (addr, tx) = serve(registry.clone(), auth).await;
        registries.push(registry);
        addrs.push(addr);
        shutdown.push(tx);
    }
    let replicas: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let nginx = tokio::task::spawn_blocking(move || wharf_testkit::Nginx::round_robin(&addrs)).await.unwrap();
    Server {
        replicas,
        base: format!("http://{}", nginx.addr),
        client: reqwest::Client::new(),
        registry: registries.swap_remove(0),
        _dir: dir,
        shutdown,
        _nginx: Some(nginx),
        _garage: Some(garage),
    }
}

pub fn postgres_url() -> String {
    std::env::var("WHARF_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Server::start_with(backend, RegistryConfig::default()).await
    }

    pub async fn start_with(backend: Backend, config: RegistryConfig) -> Server {
        Server::start_full(backend, config, None).await
    }

    /// [`Server::start_with`], with `[auth]` when `auth` is given.
    pub async fn start_full(backend: Backend, config: RegistryConfig, auth: Option<AuthFactory>) -> Server {
        Server::start_auth(backend, config, auth.map(MakeAuth::Config)).await
    }

    /// A server whose [`Authority`] `make` builds whole.
    pub async fn start_with_authority(backend: Backend, make: fn() -> Authority) -> Server {
        Server::start_auth(backend, RegistryConfig::default(), Some(MakeAuth::Authority(make))).await
    }

    async fn start_auth(backend: Backend, config: RegistryConfig, auth: Option<MakeAuth>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        if let Backend::Replicas = backend {
            return start_replicas(dir, config, auth).await;
        }
        let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
        let meta = match backend {
            Backend::Sqlite => {
                MetadataStore::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display()))
                    .await
                    .unwrap()
            }
            Backend::Postgres => MetadataStore::connect_postgres_isolated(&postgres_url())
                .await
                .expect("PostgreSQL must be reachable for the postgres tests (set WHARF_TEST_POSTGRES)"),
            Backend::Replicas => unreachable!("started above"),
        };
        let registry = Registry::new(blobs, meta, config);
        let (addr, tx) = serve(registry.clone(), auth).await;
        Server {
            replicas: vec![format!("http://{addr}")],
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            registry,
            _dir: dir,
            shutdown: vec![tx],
            _nginx: None,
            _garage: None,
        }
    }

    /// The value of one Prometheus series, added up over the replicas (each counts its own).
    pub async fn metric(&self, series: &str) -> u64 {
        let mut total = 0;
        for base in &self.replicas {
            let text = self.client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
            let value = text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok());
            total += value.unwrap_or_else(|| panic!("{series} not in /metrics of {base}:\n{text}"));
        }
        total
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let url = if path.starts_with("http") { path.to_owned() } else { self.url(path) };
        self.client.request(method, url)
    }

    /// Push a blob monolithically (POST ?digest=).
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let resp = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
        digest
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> reqwest::Response {
        self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.req(Method::GET, path).send().await.unwrap()
    }
}

/// Assert an OCI error response: status, and the code of every entry.
pub async fn expect_error(resp: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let got = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "body: {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("error body is not JSON: {text}"));
    let errors = body["errors"].as_array().unwrap_or_else(|| panic!("no errors array: {text}"));
    assert!(!errors.is_empty(), "{text}");
    for e in errors {
        assert_eq!(e["code"], code, "{text}");
        assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{text}");
    }
    body
}

/// A small image: config + one layer pushed to `repo`, and its manifest bytes (not pushed).
pub struct TestImage {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub media_type: &'static str,
    pub blobs: Vec<Digest>,
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub async fn image(server: &Server, repo: &str, seed: &str, platform: (&str, &str)) -> TestImage {
    let (config, layer, img) = image_parts(seed, platform);
    server.push_blob(repo, &config).await;
    server.push_blob(repo, &layer).await;
    img
}

/// The config, the layer and the image of [`image`], nothing pushed (a platform a sparse
/// mirror leaves out).
pub fn image_parts(seed: &str, platform: (&str, &str)) -> (Vec<u8>, Vec<u8>, TestImage) {
    let config = format!(
        r#"{{"architecture":"{}","os":"{}","rootfs":{{"type":"layers","diff_ids":[]}},"seed":"{seed}"}}"#,
        platform.1, platform.0
    )
    .into_bytes();
    let layer = format!("layer of {seed}").into_bytes();
    let c = Digest::sha256_of(&config);
    let l = Digest::sha256_of(&layer);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    )
    .into_bytes();
    let image = TestImage {
        digest: Digest::sha256_of(&manifest),
        manifest,
        media_type: OCI_MANIFEST,
        blobs: vec![c, l],
    };
    (config, layer, image)
}

/// An index over `children` given as (image, "os/arch[/variant]").
pub fn index(children: &[(&TestImage, &str)]) -> (Vec<u8>, Digest) {
    let entries: Vec<String> = children
        .iter()
        .map(|(img, p)| {
            let parts: Vec<&str> = p.split('/').collect();
            let variant = parts.get(2).map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
            format!(
                r#"{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"{}","architecture":"{}"{variant}}}}}"#,
                img.media_type,
                img.digest,
                img.manifest.len(),
                parts[0],
                parts[1]
            )
        })
        .collect();
    let body =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#, entries.join(","));
    let digest = Digest::sha256_of(body.as_bytes());
    (body.into_bytes(), digest)
}
