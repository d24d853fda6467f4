//! A Wharf registry served in-process on 127.0.0.1:0 (feature `wharf`), for the tests of the
//! crates that talk to one: the mirror, sync.

use reqwest::StatusCode;
use serde_json::Value;
use wharf_metadata::MetadataStore;
use wharf_registry::{IndexPolicy, IndexRule, Registry, RegistryConfig};
use wharf_storage::BlobStore;

/// The server stops when this is dropped; its data lives in a temporary directory.
pub struct InProcessWharf {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for InProcessWharf {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl InProcessWharf {
    /// Every repository may hold sparse indexes.
    pub async fn sparse() -> InProcessWharf {
        InProcessWharf::start(IndexRule::Sparse).await
    }

    /// SQLite metadata and files in a temporary directory; `default` for every repository.
    pub async fn start(default: IndexRule) -> InProcessWharf {
        let dir = tempfile::tempdir().expect("temp dir");
        let blobs = BlobStore::open(dir.path().join("storage")).await.expect("blob store");
        let db = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
        let meta = MetadataStore::connect(&db).await.expect("metadata store");
        let config = RegistryConfig {
            index_policy: IndexPolicy { default, repositories: Vec::new() },
            ..Default::default()
        };
        let registry = Registry::new(blobs, meta, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let stopped = async {
                let _ = rx.await;
            };
            if let Err(e) = wharf_server::serve(listener, registry, stopped).await {
                panic!("in-process wharf failed: {e}");
            }
        });
        InProcessWharf { addr, http: reqwest::Client::new(), _dir: dir, shutdown: Some(tx) }
    }

    /// `GET path` (accepting every manifest type): status and body.
    pub async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .header("accept", crate::ACCEPT_ALL_MANIFESTS.join(", "))
            .send()
            .await
            .expect("GET to the in-process wharf");
        let status = resp.status();
        (status, resp.bytes().await.expect("response body").to_vec())
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("JSON body")
    }

    pub async fn has_manifest(&self, repo: &str, reference: &str) -> bool {
        self.get(&format!("/v2/{repo}/manifests/{reference}")).await.0 == StatusCode::OK
    }

    /// The digest of the manifest a tag points at, if it exists.
    pub async fn tag_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let (status, body) = self.get(&format!("/v2/{repo}/manifests/{tag}")).await;
        (status == StatusCode::OK).then(|| crate::sha256_digest(&body))
    }

    /// `os/arch[/variant]` of the present children of an index, from `_wharf/index/<ref>`.
    pub async fn present_platforms(&self, repo: &str, reference: &str) -> Vec<String> {
        let report = self.json(&format!("/v2/{repo}/_wharf/index/{reference}")).await;
        let mut present: Vec<String> = report["children"]
            .as_array()
            .expect("children")
            .iter()
            .filter(|c| c["present"] == true)
            .map(|c| c["platform"].as_str().unwrap_or("?").to_owned())
            .collect();
        present.sort();
        present
    }

    pub async fn catalog(&self) -> Vec<String> {
        let v = self.json("/v2/_catalog").await;
        v["repositories"]
            .as_array()
            .expect("repositories")
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect()
    }
}
