//! `[[webhooks]]`: signed push and delete events in distribution's envelope reach a receiver
//! the test runs on loopback; a pattern filters; events queued while the receiver is down
//! arrive once it is back; an event queued before a restart is delivered by the next server
//! on the same data, and one a server was delivering when it stopped is handed back at once;
//! two replicas sharing a PostgreSQL outbox deliver each event exactly once.
//! SQLite and PostgreSQL (the replica setup needs Garage, which these tests do not need: the
//! outbox lives in the metadata store, so two servers on one schema are the replicas here).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sha2::Sha256;
use wharf_metadata::MetadataStore;
use wharf_registry::{EventKind, Registry, RegistryConfig, RepoPattern, Webhook};
use wharf_storage::BlobStore;

use crate::harness::{Backend, OCI_MANIFEST, Server, image_parts, postgres_url};

const SECRET: &str = "webhook secret of the test";
/// Long enough for several retries (backoff starts at one second), never reached when it works.
const PATIENCE: Duration = Duration::from_secs(90);

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Delivery {
    fn envelope(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
    fn event(&self) -> Value {
        let env = self.envelope();
        let events = env["events"].as_array().expect("an events array");
        assert_eq!(events.len(), 1, "{env}");
        events[0].clone()
    }
}

/// The test's webhook receiver: answers 200 to every POST and keeps what it got.
struct Receiver {
    got: Arc<Mutex<Vec<Delivery>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(listener: tokio::net::TcpListener) -> Receiver {
        let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let sink = got.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(Delivery { path: uri.path().to_owned(), headers, body });
                StatusCode::OK
            }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Receiver { got, stop: Some(tx), task }
    }

    async fn bind() -> (Receiver, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (Receiver::start(listener).await, addr)
    }

    /// Waits until `n` deliveries arrived at `path` (bounded), and returns them.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let at: Vec<Delivery> =
                self.got.lock().unwrap().iter().filter(|d| d.path == path).cloned().collect();
            if at.len() >= n {
                return at;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} deliveries at {path}: {at:?}",
                at.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

fn hook(url: String, events: &[EventKind], secret: Option<&str>, pattern: Option<&str>) -> Webhook {
    Webhook {
        url,
        events: events.to_vec(),
        secret: secret.map(str::to_owned),
        pattern: pattern.map(RepoPattern::new),
    }
}

fn config(webhooks: Vec<Webhook>) -> RegistryConfig {
    RegistryConfig { webhooks, ..Default::default() }
}

/// The receiver's own check: `sha256=<hex HMAC-SHA256(secret, body)>`.
fn assert_signed(d: &Delivery) {
    let header = d.headers.get("x-wharf-signature-256").expect("a signature header").to_str().unwrap();
    let hex_sig = header.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = <Hmac<Sha256>>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&d.body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap()).expect("the signature verifies");
    // A body changed in transit would not verify.
    let mut mac = <Hmac<Sha256>>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&[&d.body[..], b" "].concat());
    assert!(mac.verify_slice(&hex::decode(hex_sig).unwrap()).is_err());
}

async fn push(server: &Server, repo: &str, tag: &str, seed: &str) -> wharf_oci::Digest {
    push_to(&server.base, repo, tag, seed).await
}

/// Push a small image (config, layer, manifest by tag) to the registry at `base`.
async fn push_to(base: &str, repo: &str, tag: &str, seed: &str) -> wharf_oci::Digest {
    let client = reqwest::Client::new();
    let (config, layer, img) = image_parts(seed, ("linux", "amd64"));
    for blob in [config, layer] {
        let digest = wharf_oci::Digest::sha256_of(&blob);
        let resp = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(blob)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
    }
    let resp = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
    img.digest
}

async fn signed_push_and_delete_events_arrive(backend: Backend) {
    let (receiver, addr) = Receiver::bind().await;
    let server = Server::start_with(
        backend,
        config(vec![
            hook(format!("http://{addr}/all"), &[EventKind::Push, EventKind::Delete], Some(SECRET), None),
            hook(format!("http://{addr}/prod"), &[EventKind::Push], None, Some("prod/**")),
        ]),
    )
    .await;
    let prod = push(&server, "prod/app", "v1", "prod").await;
    let dev = push(&server, "dev/app", "v1", "dev").await;
    let resp = server.req(Method::DELETE, "/v2/dev/app/manifests/v1").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = server.req(Method::DELETE, &format!("/v2/prod/app/manifests/{prod}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let all = receiver.wait_for("/all", 4).await;
    let mut seen = Vec::new();
    for d in &all {
        assert_eq!(
            d.headers.get("content-type").unwrap(),
            "application/vnd.docker.distribution.events.v1+json"
        );
        assert_signed(d);
        let e = d.event();
        assert!(e["id"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
        assert!(e["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')), "{e}");
        assert!(e["source"]["instanceID"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
        assert!(e["request"]["host"].as_str().is_some(), "{e}");
        let t = &e["target"];
        seen.push((
            e["action"].as_str().unwrap().to_owned(),
            t["repository"].as_str().unwrap().to_owned(),
            t["digest"].as_str().unwrap().to_owned(),
            t["tag"].as_str().map(str::to_owned),
        ));
        if e["action"] == "push" {
            assert_eq!(t["mediaType"], OCI_MANIFEST, "{e}");
            assert!(t["size"].as_u64().is_some_and(|n| n > 0) && t["size"] == t["length"], "{e}");
            let url = t["url"].as_str().unwrap();
            assert!(
                url.ends_with(&format!(
                    "/v2/{}/manifests/{}",
                    t["repository"].as_str().unwrap(),
                    t["digest"].as_str().unwrap()
                )),
                "{e}"
            );
            assert_eq!(e["request"]["method"], "PUT");
        }
    }
    seen.sort();
    let mut want = vec![
        ("delete".to_owned(), "dev/app".to_owned(), dev.to_string(), Some("v1".to_owned())),
        ("delete".to_owned(), "prod/app".to_owned(), prod.to_string(), None),
        ("push".to_owned(), "dev/app".to_owned(), dev.to_string(), Some("v1".to_owned())),
        ("push".to_owned(), "prod/app".to_owned(), prod.to_string(), Some("v1".to_owned())),
    ];
    want.sort();
    assert_eq!(seen, want);

    // The pattern let only the prod push through, unsigned (no secret).
    let only_prod = receiver.wait_for("/prod", 1).await;
    let e = only_prod[0].event();
    assert_eq!(e["action"], "push");
    assert_eq!(e["target"]["repository"], "prod/app");
    assert!(only_prod[0].headers.get("x-wharf-signature-256").is_none());

    // Nothing else comes: a delivered event is not sent twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.got.lock().unwrap().len(), 5, "{:?}", receiver.got.lock().unwrap());
    assert_eq!(server.metric("wharf_webhook_deliveries_total{result=\"ok\"}").await, 5);
    assert_eq!(server.metric("wharf_webhook_queue_depth").await, 0);
    receiver.stop().await;
}

/// A port nothing listens on (for now).
async fn closed_port() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

async fn events_wait_while_the_receiver_is_down(backend: Backend) {
    let reserved = closed_port().await;
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let server = Server::start_with(
        backend,
        config(vec![hook(format!("http://{addr}/hook"), &[EventKind::Push], Some(SECRET), None)]),
    )
    .await;
    let a = push(&server, "team/a", "v1", "a").await;
    let b = push(&server, "team/b", "v1", "b").await;
    // Both queued, and delivery was tried and failed: the pushes did not wait for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.metric("wharf_webhook_deliveries_total{result=\"failed\"}").await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no failed delivery counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.metric("wharf_webhook_queue_depth").await, 2);

    let listener = tokio::net::TcpListener::bind(addr).await.expect("the receiver's port again");
    let receiver = Receiver::start(listener).await;
    let got = receiver.wait_for("/hook", 2).await;
    let mut digests: Vec<String> = got
        .iter()
        .map(|d| {
            assert_signed(d);
            d.event()["target"]["digest"].as_str().unwrap().to_owned()
        })
        .collect();
    digests.sort();
    let mut want = vec![a.to_string(), b.to_string()];
    want.sort();
    assert_eq!(digests, want);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.metric("wharf_webhook_queue_depth").await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.stop().await;
}

/// A server of the test's own, so that it can be stopped and another started on its data.
struct OwnServer {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn own_server(registry: Registry) -> OwnServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        wharf_server::serve(listener, registry, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    OwnServer { base, stop, task }
}

async fn metric(base: &str, series: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series}:\n{text}"))
}

async fn an_event_survives_a_restart(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let reserved = closed_port().await;
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let cfg = config(vec![hook(format!("http://{addr}/hook"), &[EventKind::Push], Some(SECRET), None)]);
    let sqlite = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
    let first_meta = match backend {
        Backend::Postgres => MetadataStore::connect_postgres_isolated(&postgres_url())
            .await
            .expect("PostgreSQL must be reachable for the postgres tests (set WHARF_TEST_POSTGRES)"),
        _ => MetadataStore::connect(&sqlite).await.unwrap(),
    };
    let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
    let first = own_server(Registry::new(blobs, first_meta.clone(), cfg.clone())).await;

    // Push through the first server while the receiver is down.
    let pushed = push_to(&first.base, "team/app", "v1", "restart").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric(&first.base, "wharf_webhook_deliveries_total{result=\"failed\"}").await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no failed delivery counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = first.stop.send(());
    first.task.await.unwrap();

    // A new server on the same data (a new pool on PostgreSQL: another process would have one).
    let second_meta = match backend {
        Backend::Postgres => {
            MetadataStore::connect_postgres_schema(&postgres_url(), first_meta.isolated_schema().unwrap())
                .await
                .unwrap()
        }
        _ => {
            first_meta.close().await;
            MetadataStore::connect(&sqlite).await.unwrap()
        }
    };
    let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.expect("the receiver's port again");
    let receiver = Receiver::start(listener).await;
    let second = own_server(Registry::new(blobs, second_meta, cfg)).await;
    let got = receiver.wait_for("/hook", 1).await;
    assert_signed(&got[0]);
    let e = got[0].event();
    assert_eq!(e["action"], "push");
    assert_eq!(e["target"]["digest"], pushed.to_string());
    assert_eq!(e["target"]["tag"], "v1");
    assert_eq!(metric(&second.base, "wharf_webhook_deliveries_total{result=\"ok\"}").await, 1);
    let _ = second.stop.send(());
    second.task.await.unwrap();
    receiver.stop().await;
    first_meta.drop_isolated_schema().await.unwrap();
}

/// A server stopped while it is delivering hands the event back: the next deliverer (another
/// replica, or the next start) can claim it at once, not after the stopped one's lease.
async fn a_stopping_server_hands_back_what_it_was_delivering(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // A receiver that takes the connection and never answers: the delivery stays under way.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hung.local_addr().unwrap();
    let (accepted, reached) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let (conn, _) = hung.accept().await.unwrap();
        let _ = accepted.send(());
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(conn);
    });
    let cfg = config(vec![hook(format!("http://{addr}/hook"), &[EventKind::Push], None, None)]);
    let meta = match backend {
        Backend::Postgres => MetadataStore::connect_postgres_isolated(&postgres_url())
            .await
            .expect("PostgreSQL must be reachable for the postgres tests (set WHARF_TEST_POSTGRES)"),
        _ => MetadataStore::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display()))
            .await
            .unwrap(),
    };
    let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
    let server = own_server(Registry::new(blobs, meta.clone(), cfg)).await;
    let pushed = push_to(&server.base, "team/app", "v1", "hand back").await;
    tokio::time::timeout(PATIENCE, reached).await.expect("the delivery reached the receiver").unwrap();
    let _ = server.stop.send(());
    server.task.await.unwrap();

    // What the next deliverer finds: the event, due now (a claim of the stopped server would
    // keep it from everyone for its 60 s lease).
    let claimed = meta.claim_events(10, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 1, "the event is still held by the stopped server");
    assert!(claimed[0].body.contains(&pushed.to_string()), "{}", claimed[0].body);
    assert_eq!(claimed[0].attempts, 2, "the interrupted attempt counts");
    holder.abort();
    if matches!(backend, Backend::Postgres) {
        meta.drop_isolated_schema().await.unwrap();
    }
}

/// Two replicas on one PostgreSQL schema (two pools, one blob directory) each run a delivery
/// task over the shared outbox. Events queued through both while the receiver is down are all
/// due at once when it comes back, so both tasks race for every row: each event must arrive
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_deliver_each_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = closed_port().await;
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let cfg = config(vec![hook(format!("http://{addr}/hook"), &[EventKind::Push], Some(SECRET), None)]);
    let a_meta = MetadataStore::connect_postgres_isolated(&postgres_url())
        .await
        .expect("PostgreSQL must be reachable for the postgres tests (set WHARF_TEST_POSTGRES)");
    let b_meta = MetadataStore::connect_postgres_schema(&postgres_url(), a_meta.isolated_schema().unwrap())
        .await
        .unwrap();
    let blobs = || BlobStore::open(dir.path().join("storage"));
    let a = own_server(Registry::new(blobs().await.unwrap(), a_meta.clone(), cfg.clone())).await;
    let b = own_server(Registry::new(blobs().await.unwrap(), b_meta, cfg)).await;

    const EVENTS: usize = 12;
    let mut pushed = Vec::new();
    for i in 0..EVENTS {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        pushed.push(push_to(base, &format!("team/app{i}"), "v1", &format!("replica {i}")).await.to_string());
    }
    // Both replicas have tried and failed: every row is due again, on both.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for base in [&a.base, &b.base] {
        while metric(base, "wharf_webhook_deliveries_total{result=\"failed\"}").await < 1 {
            assert!(tokio::time::Instant::now() < deadline, "no failed delivery counted at {base}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let listener = tokio::net::TcpListener::bind(addr).await.expect("the receiver's port again");
    let receiver = Receiver::start(listener).await;
    receiver.wait_for("/hook", EVENTS).await;
    // Long enough for a second delivery of any row to arrive (both tasks poll every second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = receiver.got.lock().unwrap().clone();
    let mut ids: Vec<String> = got.iter().map(|d| d.event()["id"].as_str().unwrap().to_owned()).collect();
    let mut digests: Vec<String> =
        got.iter().map(|d| d.event()["target"]["digest"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    digests.sort();
    pushed.sort();
    assert_eq!(got.len(), EVENTS, "each event once: {digests:?}");
    assert_eq!(ids.len(), EVENTS);
    assert_eq!(digests, pushed);
    let delivered = metric(&a.base, "wharf_webhook_deliveries_total{result=\"ok\"}").await
        + metric(&b.base, "wharf_webhook_deliveries_total{result=\"ok\"}").await;
    assert_eq!(delivered, EVENTS as u64);
    assert_eq!(metric(&a.base, "wharf_webhook_queue_depth").await, 0);
    for server in [a, b] {
        let _ = server.stop.send(());
        server.task.await.unwrap();
    }
    receiver.stop().await;
    a_meta.drop_isolated_schema().await.unwrap();
}

macro_rules! sqlite_and_postgres {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(Backend::Sqlite).await } )*
            use super::Backend;
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(Backend::Postgres).await } )*
            use super::Backend;
        }
    };
}

sqlite_and_postgres!(
    signed_push_and_delete_events_arrive,
    events_wait_while_the_receiver_is_down,
    an_event_survives_a_restart,
    a_stopping_server_hands_back_what_it_was_delivering,
);
