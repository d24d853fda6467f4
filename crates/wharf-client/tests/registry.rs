//! The client against real CNCF distribution 2.8 (Debian's `docker-registry`), and against small
//! in-test HTTP peers for what distribution cannot show: token servers, busy answers, dropped
//! connections and wrong bytes.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use wharf_client::{ByteStream, ClientError, ClientOptions, Credentials, RegistryClient};
use wharf_oci::{Digest, Reference, RepoName, media_types};
use wharf_testkit::{Distribution, seeded_bytes};

fn repo(s: &str) -> RepoName {
    s.parse().unwrap()
}

fn reference(s: &str) -> Reference {
    s.parse().unwrap()
}

/// A source stream in 64 KiB pieces.
fn stream_of(bytes: &[u8]) -> ByteStream {
    let pieces: Vec<Result<Bytes, ClientError>> =
        bytes.chunks(64 * 1024).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    Box::pin(futures_util::stream::iter(pieces))
}

async fn collect(mut s: ByteStream) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn client(host: &str, options: ClientOptions) -> RegistryClient {
    RegistryClient::new(host, options).unwrap()
}

fn image_manifest(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let desc = |mt: &str, b: &[u8]| serde_json::json!({"mediaType": mt, "digest": Digest::sha256_of(b).to_string(), "size": b.len()});
    let v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": desc("application/vnd.oci.image.config.v1+json", config),
        "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
    });
    // Pretty-printed on purpose: the bytes must come back exactly, whitespace included.
    serde_json::to_vec_pretty(&v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_push_pull_mount_tags() {
    let reg = Distribution::start();
    let c = client(&reg.addr, ClientOptions { chunk_size: 2 * 1024 * 1024, ..Default::default() });
    let info = c.ping().await.unwrap();
    assert_eq!(info.sparse_manifest_support, None);
    assert_eq!(info.distribution_api_version.as_deref(), Some("registry/2.0"));

    let app = repo("team/app");
    // Config: small, in memory.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_d = Digest::sha256_of(&config);
    c.push_blob_bytes(&app, &config_d, Bytes::from(config.clone())).await.unwrap();
    assert_eq!(c.head_blob(&app, &config_d).await.unwrap(), Some(config.len() as u64));
    // Wrong digest for the bytes: refused before anything is sent.
    assert!(matches!(
        c.push_blob_bytes(&app, &Digest::sha256_of(b"other"), Bytes::from(config.clone())).await,
        Err(ClientError::DigestMismatch { .. })
    ));

    // Monolithic (below the 2 MiB chunk size) and chunked (5 PATCHes, the last one short).
    let small = seeded_bytes(1, 1024 * 1024 + 7);
    let big = seeded_bytes(2, 9 * 1024 * 1024 + 123);
    for blob in [&small, &big] {
        let d = Digest::sha256_of(blob);
        assert_eq!(c.head_blob(&app, &d).await.unwrap(), None);
        c.push_blob(&app, &d, blob.len() as u64, stream_of(blob)).await.unwrap();
        assert_eq!(c.head_blob(&app, &d).await.unwrap(), Some(blob.len() as u64));
        let (total, s) = c.get_blob(&app, &d, 0).await.unwrap();
        assert_eq!(total, blob.len() as u64);
        assert!(collect(s).await.unwrap() == **blob, "blob comes back byte for byte");
        // Resume at an offset, with and without the prefix's hash.
        let off = 1000 + blob.len() / 2;
        let (total, s) = c.get_blob(&app, &d, off as u64).await.unwrap();
        assert_eq!(total, blob.len() as u64);
        assert!(collect(s).await.unwrap() == blob[off..]);
        let mut prefix = d.algorithm().hasher();
        prefix.update(&blob[..off]);
        let (_, s) = c.get_blob_resume(&app, &d, off as u64, prefix).await.unwrap();
        assert!(collect(s).await.unwrap() == blob[off..]);
        // At the very end: nothing left, still verified.
        let (_, s) = c.get_blob(&app, &d, blob.len() as u64).await.unwrap();
        assert!(collect(s).await.unwrap().is_empty());
    }
    // A source shorter than announced fails and publishes nothing.
    let short = seeded_bytes(3, 3000);
    let short_d = Digest::sha256_of(&short);
    let e = c.push_blob(&app, &short_d, 5000, stream_of(&short)).await.unwrap_err();
    assert!(e.to_string().contains("ended after 3000 of 5000"), "{e}");
    assert_eq!(c.head_blob(&app, &short_d).await.unwrap(), None);
    // Bytes that do not match the digest are refused by the registry (DIGEST_INVALID).
    let e = c.push_blob(&app, &short_d, 3000, stream_of(&seeded_bytes(4, 3000))).await.unwrap_err();
    assert_eq!(e.code(), Some("DIGEST_INVALID"), "{e}");
    assert_eq!(c.head_blob(&app, &short_d).await.unwrap(), None);

    // Cross-repository mount; an unknown blob is not mounted and its session is cancelled.
    let other = repo("other/app");
    let small_d = Digest::sha256_of(&small);
    assert!(c.mount_blob(&other, &small_d, &app).await.unwrap());
    assert_eq!(c.head_blob(&other, &small_d).await.unwrap(), Some(small.len() as u64));
    assert!(!c.mount_blob(&other, &Digest::sha256_of(b"nope"), &app).await.unwrap());

    // Manifests: the exact bytes, by tag and by digest.
    let manifest = image_manifest(&config, &[&small, &big]);
    let md = Digest::sha256_of(&manifest);
    let pushed = c
        .put_manifest(&app, &reference("v1"), media_types::OCI_MANIFEST, Bytes::from(manifest.clone()))
        .await
        .unwrap();
    assert_eq!(pushed, md);
    for r in [reference("v1"), Reference::Digest(md.clone())] {
        let got = c.get_manifest(&app, &r).await.unwrap();
        assert_eq!(got.bytes, manifest);
        assert_eq!(got.digest, md);
        assert_eq!(got.media_type, media_types::OCI_MANIFEST);
        let (hd, ht, hs) = c.head_manifest(&app, &r).await.unwrap().unwrap();
        assert_eq!((hd, ht.as_str(), hs), (md.clone(), media_types::OCI_MANIFEST, manifest.len() as u64));
    }
    assert_eq!(c.head_manifest(&app, &reference("absent")).await.unwrap(), None);
    match c.get_manifest(&app, &reference("absent")).await {
        Err(ClientError::NotFound { what, message }) => {
            assert!(what.contains("team/app:absent"), "{what}");
            assert_eq!(message.as_deref(), Some("manifest unknown"));
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // By digest, bytes that do not hash to it are refused before sending.
    assert!(matches!(
        c.put_manifest(
            &app,
            &Reference::Digest(Digest::sha256_of(b"x")),
            media_types::OCI_MANIFEST,
            Bytes::from(manifest.clone())
        )
        .await,
        Err(ClientError::DigestMismatch { .. })
    ));
    // A manifest whose blobs are missing: the registry's error, parsed.
    let missing = image_manifest(&config, &[b"not uploaded"]);
    let e = c
        .put_manifest(&app, &reference("broken"), media_types::OCI_MANIFEST, Bytes::from(missing))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("MANIFEST_BLOB_UNKNOWN"), "{e}");
    assert_eq!(e.status(), Some(400));

    // Tags, several pages.
    for i in 0..5 {
        c.put_manifest(
            &app,
            &reference(&format!("t{i}")),
            media_types::OCI_MANIFEST,
            Bytes::from(manifest.clone()),
        )
        .await
        .unwrap();
    }
    let mut tags = c.list_tags_paged(&app, 2).await.unwrap();
    tags.sort();
    assert_eq!(tags, ["t0", "t1", "t2", "t3", "t4", "v1"]);
    assert_eq!(c.list_tags(&app).await.unwrap().len(), 6);
    assert!(c.list_tags(&repo("never/pushed")).await.unwrap_err().is_not_found());

    // No referrers API in distribution 2.8.
    assert_eq!(c.referrers(&app, &md, None).await.unwrap(), None);

    // Raw GET of any endpoint.
    let (status, ct, body) = c.get_raw("/v2/team/app/tags/list").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("application/json"));
    assert!(String::from_utf8_lossy(&body).contains("\"t3\""));

    // Delete.
    c.delete_manifest(&app, &Reference::Digest(md.clone())).await.unwrap();
    assert_eq!(c.head_manifest(&app, &Reference::Digest(md.clone())).await.unwrap(), None);
    assert!(c.delete_manifest(&app, &Reference::Digest(md)).await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribution_basic_auth() {
    let reg = Distribution::start_with_basic_auth("alice", "s3cret-pw");
    let app = repo("private/app");

    let anon = client(&reg.addr, ClientOptions::default());
    match anon.ping().await {
        Err(ClientError::Unauthorized { message, .. }) => {
            assert!(message.contains("user name and password"), "{message}")
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }

    let wrong = client(
        &reg.addr,
        ClientOptions { credentials: Some(Credentials::new("alice", "wrong-pw")), ..Default::default() },
    );
    let e = wrong.head_blob(&app, &Digest::sha256_of(b"x")).await.unwrap_err();
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong-pw") && !format!("{e:?}").contains("wrong-pw"));

    let good = client(
        &reg.addr,
        ClientOptions { credentials: Some(Credentials::new("alice", "s3cret-pw")), ..Default::default() },
    );
    good.ping().await.unwrap();
    let blob = seeded_bytes(9, 100_000);
    let d = Digest::sha256_of(&blob);
    good.push_blob(&app, &d, blob.len() as u64, stream_of(&blob)).await.unwrap();
    let (_, s) = good.get_blob(&app, &d, 0).await.unwrap();
    assert!(collect(s).await.unwrap() == blob);
}

/// A TCP proxy that cuts the first connection crossing `kill_after` client-to-registry bytes.
async fn cutting_proxy(upstream: String, kill_after: i64) -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let budget = Arc::new(AtomicI64::new(kill_after));
    let cuts = Arc::new(AtomicUsize::new(0));
    let cuts2 = cuts.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let budget = budget.clone();
            let cuts = cuts2.clone();
            tokio::spawn(async move {
                let Ok(up) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = up.into_split();
                let c2u = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let before = budget.fetch_sub(n as i64, Ordering::SeqCst);
                        if before > 0 && before <= n as i64 {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        if uw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let u2c = async {
                    let _ = tokio::io::copy(&mut ur, &mut cw).await;
                };
                tokio::select! { _ = c2u => {}, _ = u2c => {} }
            });
        }
    });
    (addr, cuts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_survives_a_dropped_connection() {
    let reg = Distribution::start();
    let (proxy, cuts) = cutting_proxy(reg.addr.clone(), 5 * 1024 * 1024 / 2).await;
    let c = client(&proxy, ClientOptions { chunk_size: 1024 * 1024, ..Default::default() });
    let app = repo("resume/app");
    let blob = Arc::new(seeded_bytes(7, 6 * 1024 * 1024 + 5));
    let d = Digest::sha256_of(&blob);
    let opened = Arc::new(Mutex::new(Vec::new()));
    let (b, o) = (blob.clone(), opened.clone());
    let opener: wharf_client::BlobOpener = Box::new(move |offset| {
        o.lock().unwrap().push(offset);
        let s = stream_of(&b[offset as usize..]);
        Box::pin(async move { Ok(s) })
    });
    c.push_blob_resumable(&app, &d, blob.len() as u64, opener).await.unwrap();
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy cut one upload");
    let opened = opened.lock().unwrap().clone();
    eprintln!("source opened at offsets {opened:?}");
    assert!(opened.len() >= 2, "the source was reopened after the cut: {opened:?}");
    let (_, s) = c.get_blob(&app, &d, 0).await.unwrap();
    assert!(collect(s).await.unwrap() == *blob);
}

// ---------------------------------------------------------------------------------------------
// In-test HTTP/1.1 peers (one request per connection) for failure cases and token servers.

#[derive(Debug, Clone)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }
}

#[derive(Default)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (a dropped connection).
    cut_at: Option<usize>,
    /// Close without answering at all (the answer was lost).
    no_answer: bool,
}

fn resp(status: u16) -> Response {
    Response { status, ..Default::default() }
}

impl Response {
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
}

struct Peer {
    addr: String,
    log: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Peer {
    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
    fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.path() == path).count()
    }
}

async fn peer(handler: impl Fn(&Request, &str) -> Response + Send + Sync + 'static) -> Peer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(handler);
    let (log2, addr2) = (log.clone(), addr.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (log, handler, addr) = (log2.clone(), handler.clone(), addr2.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 8192];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p;
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let mut first = lines.next().unwrap_or("").split(' ');
                let method = first.next().unwrap_or("").to_owned();
                let target = first.next().unwrap_or("").to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buf[head_end + 4..].to_vec();
                while body.len() < len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => body.extend_from_slice(&tmp[..n]),
                    }
                }
                let req = Request { method, target, headers, body };
                let r = handler(&req, &addr);
                let is_head = req.method == "HEAD";
                log.lock().unwrap().push(req);
                if r.no_answer {
                    return;
                }
                let mut out = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", r.status);
                if !r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
                    out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
                }
                for (k, v) in &r.headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                if !is_head {
                    bytes.extend_from_slice(&r.body[..r.cut_at.unwrap_or(r.body.len()).min(r.body.len())]);
                }
                let _ = sock.write_all(&bytes).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Peer { addr, log, task }
}

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_scope() {
    let token_hits = Arc::new(AtomicUsize::new(0));
    let hits = token_hits.clone();
    let p = peer(move |r, addr| {
        if r.path() == "/token" {
            hits.fetch_add(1, Ordering::SeqCst);
            // The scope's comma must survive: ask exactly as challenged.
            let q = r.target.split_once('?').map(|x| x.1).unwrap_or("");
            let auth_ok = r.header("authorization") == Some("Basic Ym9iOnB3LWJvYg=="); // bob:pw-bob
            if !auth_ok {
                return resp(401).body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#);
            }
            if !q.contains("service=fake-registry") || !q.contains("scope=repository%3Aapp%3Apull") {
                return resp(400).body(format!("unexpected query {q}"));
            }
            return resp(200).body(r#"{"token":"tok-123","expires_in":300}"#);
        }
        if r.header("authorization") != Some("Bearer tok-123") {
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="fake-registry",scope="repository:app:pull""#
            );
            return resp(401)
                .header("WWW-Authenticate", &challenge)
                .body(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#);
        }
        match r.path() {
            "/v2/app/manifests/v1" => resp(200)
                .header("Content-Type", media_types::OCI_MANIFEST)
                .header("Docker-Content-Digest", &Digest::sha256_of(MANIFEST).to_string())
                .body(MANIFEST),
            _ => resp(404).body(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#),
        }
    })
    .await;
    let app = repo("app");
    let good = client(
        &p.addr,
        ClientOptions { credentials: Some(Credentials::new("bob", "pw-bob")), ..Default::default() },
    );
    for _ in 0..2 {
        let m = good.get_manifest(&app, &reference("v1")).await.unwrap();
        assert_eq!(m.bytes, MANIFEST);
        assert_eq!(m.digest, Digest::sha256_of(MANIFEST));
    }
    assert!(good.head_manifest(&app, &reference("v1")).await.unwrap().is_some());
    assert_eq!(token_hits.load(Ordering::SeqCst), 1, "one token for three requests of one scope");
    assert_eq!(good.token_fetch_count().await, 1);
    // Only the first request went out without a token (besides the scheme probe of /v2/).
    let unauth = p
        .requests()
        .iter()
        .filter(|r| !["/token", "/v2/"].contains(&r.path()) && r.header("authorization").is_none())
        .count();
    assert_eq!(unauth, 1);

    // Wrong password: a clear error that names the user, never the password.
    let bad = client(
        &p.addr,
        ClientOptions { credentials: Some(Credentials::new("bob", "hunter2")), ..Default::default() },
    );
    let e = bad.get_manifest(&app, &reference("v1")).await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(matches!(e, ClientError::Unauthorized { .. }), "{text}");
    assert!(text.contains("bob") && text.contains("bad credentials"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("aHVudGVyMg"), "{text}");
}

#[tokio::test]
async fn retries_busy_and_unavailable_answers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let p = peer(move |r, _| {
        if r.path() == "/v2/" {
            return resp(200); // the scheme probe
        }
        let i = n.fetch_add(1, Ordering::SeqCst);
        match (r.path(), i) {
            ("/v2/app/manifests/v1", 0 | 1) => resp(503).body("try later"),
            ("/v2/app/manifests/v1", _) => {
                resp(200).header("Content-Type", media_types::OCI_MANIFEST).body(MANIFEST)
            }
            ("/v2/app/tags/list", 3) => resp(429).header("Retry-After", "0"),
            ("/v2/app/tags/list", _) => resp(200).body(r#"{"name":"app","tags":["a"]}"#),
            _ => resp(502),
        }
    })
    .await;
    let c = client(&p.addr, ClientOptions::default());
    let app = repo("app");
    let m = c.get_manifest(&app, &reference("v1")).await.unwrap();
    assert_eq!(m.bytes, MANIFEST);
    assert_eq!(p.count("/v2/app/manifests/v1"), 3);
    assert_eq!(c.list_tags(&app).await.unwrap(), ["a"]);
    assert_eq!(p.count("/v2/app/tags/list"), 2);

    // Always 502: gives up after max_retries, with the registry's status.
    let c = client(&p.addr, ClientOptions { max_retries: 2, ..Default::default() });
    let e = c.head_blob(&app, &Digest::sha256_of(b"")).await.unwrap_err();
    assert_eq!(e.status(), Some(502), "{e}");
    assert_eq!(p.count(&format!("/v2/app/blobs/{}", Digest::sha256_of(b""))), 3);
}

#[tokio::test]
async fn downloads_verify_digests_and_resume() {
    let blob = seeded_bytes(11, 300_000);
    let good = Digest::sha256_of(&blob);
    let lie = Digest::sha256_of(b"something else");
    let served = blob.clone();
    let p = peer(move |r, _| {
        let path = r.path().to_owned();
        if r.method == "POST" {
            resp(202).header("Location", "/up/1")
        } else if r.method != "GET" {
            resp(204)
        } else if path.ends_with(&good_path(&Digest::sha256_of(&served))) {
            // First request: all headers, half the body, then the connection drops.
            match r.header("range") {
                None => Response { cut_at: Some(100_000), ..resp(200).body(served.clone()) },
                Some(range) => {
                    let from: usize =
                        range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
                    resp(206)
                        .header(
                            "Content-Range",
                            &format!("bytes {from}-{}/{}", served.len() - 1, served.len()),
                        )
                        .body(served[from..].to_vec())
                }
            }
        } else if path.contains("/blobs/") {
            // Any other digest: the same bytes (which do not match it).
            resp(200).body(served.clone())
        } else if path.contains("/manifests/") {
            resp(200).header("Content-Type", media_types::OCI_MANIFEST).body(MANIFEST)
        } else {
            resp(404)
        }
    })
    .await;
    fn good_path(d: &Digest) -> String {
        format!("/blobs/{d}")
    }
    let c = client(&p.addr, ClientOptions::default());
    let app = repo("app");

    let (total, s) = c.get_blob(&app, &good, 0).await.unwrap();
    assert_eq!(total, blob.len() as u64);
    assert!(collect(s).await.unwrap() == blob, "resumed download is complete and verified");
    let ranges: Vec<_> = p.requests().iter().filter_map(|r| r.header("range").map(str::to_owned)).collect();
    assert_eq!(ranges, ["bytes=100000-"]);

    // Wrong bytes: every byte is delivered, then the stream ends with DigestMismatch.
    let (_, mut s) = c.get_blob(&app, &lie, 0).await.unwrap();
    let mut got = 0;
    let err = loop {
        match s.next().await {
            Some(Ok(b)) => got += b.len(),
            Some(Err(e)) => break e,
            None => panic!("a mismatching blob must end with an error"),
        }
    };
    assert_eq!(got, blob.len());
    match err {
        ClientError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, lie);
            assert_eq!(actual, good);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(s.next().await.is_none(), "the stream ends after its error");

    // Such a stream can never complete an upload: the last bytes wait for the check.
    let e = c.push_blob(&app, &lie, blob.len() as u64, c.get_blob(&app, &lie, 0).await.unwrap().1).await;
    assert!(matches!(e, Err(ClientError::DigestMismatch { .. })), "{e:?}");
    assert!(
        !p.requests().iter().any(|r| r.method == "PUT"),
        "nothing was committed (the upload session was never completed)"
    );

    // A manifest asked for by digest must hash to it.
    let e = c.get_manifest(&app, &Reference::Digest(lie.clone())).await.unwrap_err();
    assert!(matches!(e, ClientError::DigestMismatch { .. }), "{e:?}");
}

#[tokio::test]
async fn relative_locations_keep_their_query() {
    let p = peer(|r, _| match (r.method.as_str(), r.path()) {
        ("POST", "/v2/app/blobs/uploads/") => resp(202).header("Location", "/upload/abc?session=s1&x=a%2Fb"),
        ("PUT", "/upload/abc") => resp(201),
        ("HEAD", _) => resp(404),
        ("GET", "/v2/") => resp(200),
        _ => resp(400),
    })
    .await;
    let c = client(&p.addr, ClientOptions::default());
    let bytes = Bytes::from_static(b"config");
    let d = Digest::sha256_of(&bytes);
    c.push_blob_bytes(&repo("app"), &d, bytes.clone()).await.unwrap();
    let put = p.requests().into_iter().find(|r| r.method == "PUT").unwrap();
    assert_eq!(put.target, format!("/upload/abc?session=s1&x=a%2Fb&digest=sha256%3A{}", d.hex()));
    assert_eq!(put.body, b"config");
    assert_eq!(put.header("content-type"), Some("application/octet-stream"));
}

#[tokio::test]
async fn referrers_api_and_client_side_filter() {
    let subject = Digest::sha256_of(MANIFEST);
    let sig = Digest::sha256_of(b"sig");
    let sbom = Digest::sha256_of(b"sbom");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": [
            {"mediaType": media_types::OCI_MANIFEST, "digest": sig.to_string(), "size": 10, "artifactType": "application/vnd.dev.cosign.simplesigning.v1+json"},
            {"mediaType": media_types::OCI_MANIFEST, "digest": sbom.to_string(), "size": 20, "artifactType": "application/spdx+json"}
        ]
    })
    .to_string();
    let p = peer(move |r, _| {
        if r.path().starts_with("/v2/app/referrers/") {
            resp(200).header("Content-Type", media_types::OCI_INDEX).body(index.clone())
        } else {
            resp(404)
        }
    })
    .await;
    let c = client(&p.addr, ClientOptions::default());
    let all = c.referrers(&repo("app"), &subject, None).await.unwrap().unwrap();
    assert_eq!(all.len(), 2);
    let spdx = c.referrers(&repo("app"), &subject, Some("application/spdx+json")).await.unwrap().unwrap();
    assert_eq!(spdx.len(), 1);
    assert_eq!(spdx[0].digest, sbom);
    let q = p.requests().last().unwrap().target.clone();
    assert!(q.ends_with("?artifactType=application%2Fspdx%2Bjson"), "{q}");
    // No API (404 from a registry without it): None.
    assert_eq!(c.referrers(&repo("other"), &subject, None).await.unwrap(), None);
}

#[tokio::test]
async fn tag_pagination_follows_link_headers() {
    let all = ["a", "b", "c", "d", "e"];
    let p = peer(move |r, addr| {
        if r.path() != "/v2/app/tags/list" {
            return resp(404);
        }
        let q = r.target.split_once('?').map(|x| x.1).unwrap_or("").to_owned();
        let param =
            |k: &str| q.split('&').find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_owned));
        let n: usize = param("n").and_then(|n| n.parse().ok()).unwrap_or(100);
        let start = match param("last") {
            Some(l) => all.iter().position(|t| *t == l).unwrap() + 1,
            None => 0,
        };
        let page: Vec<&str> = all.iter().skip(start).take(n).copied().collect();
        let mut out = resp(200).body(serde_json::json!({"name": "app", "tags": page}).to_string());
        if start + n < all.len() {
            let last = page.last().unwrap();
            // One relative link, one absolute, as registries do both.
            let link = if start == 0 {
                format!("</v2/app/tags/list?n={n}&last={last}>; rel=\"next\"")
            } else {
                format!("<http://{addr}/v2/app/tags/list?n={n}&last={last}>; rel=\"next\"")
            };
            out = out.header("Link", &link);
        }
        out
    })
    .await;
    let c = client(&p.addr, ClientOptions::default());
    assert_eq!(c.list_tags_paged(&repo("app"), 2).await.unwrap(), all);
    assert_eq!(p.count("/v2/app/tags/list"), 3);
    assert_eq!(c.list_tags(&repo("app")).await.unwrap(), all);
    assert!(p.requests().last().unwrap().target.ends_with("?n=1000"));
}

/// An upload endpoint without distribution's `_state` (like zot or Wharf): it can continue a
/// session after a lost answer. `fault(patch_number, body) -> (bytes kept, answer?)`.
struct UploadPeer {
    peer: Peer,
    stored: Arc<Mutex<Vec<u8>>>,
}

async fn upload_peer(fault: impl Fn(usize, &[u8]) -> Option<usize> + Send + Sync + 'static) -> UploadPeer {
    let stored = Arc::new(Mutex::new(Vec::new()));
    let st = stored.clone();
    let patches = AtomicUsize::new(0);
    let peer = peer(move |r, _| {
        let mut st = st.lock().unwrap();
        match (r.method.as_str(), r.path()) {
            ("POST", "/v2/app/blobs/uploads/") => {
                resp(202).header("Location", "/v2/app/blobs/uploads/s1?k=v")
            }
            ("PATCH", "/v2/app/blobs/uploads/s1") => {
                let start: usize =
                    r.header("content-range").unwrap().split('-').next().unwrap().parse().unwrap();
                if start != st.len() {
                    return resp(416).header("Range", &format!("0-{}", st.len().max(1) - 1));
                }
                let i = patches.fetch_add(1, Ordering::SeqCst);
                match fault(i, &r.body) {
                    Some(keep) => {
                        st.extend_from_slice(&r.body[..keep]);
                        Response { no_answer: true, ..resp(500) }
                    }
                    None => {
                        st.extend_from_slice(&r.body);
                        resp(202)
                            .header("Location", "/v2/app/blobs/uploads/s1?k=v")
                            .header("Range", &format!("0-{}", st.len() - 1))
                    }
                }
            }
            ("GET", "/v2/app/blobs/uploads/s1") => resp(204)
                .header("Location", "/v2/app/blobs/uploads/s1?k=v")
                .header("Range", &format!("0-{}", st.len().max(1) - 1)),
            ("PUT", "/v2/app/blobs/uploads/s1") => {
                let d = r.target.split("digest=").nth(1).unwrap().replace("%3A", ":");
                if d == Digest::sha256_of(&st).to_string() && r.body.is_empty() {
                    resp(201)
                } else {
                    resp(400)
                        .body(r#"{"errors":[{"code":"DIGEST_INVALID","message":"digest did not match"}]}"#)
                }
            }
            ("DELETE", _) => resp(204),
            _ => resp(404),
        }
    })
    .await;
    UploadPeer { peer, stored }
}

#[tokio::test]
async fn chunked_upload_resumes_from_upload_status() {
    let blob = Arc::new(seeded_bytes(21, 5 * 100_000 + 17));
    let d = Digest::sha256_of(&blob);
    let opts = || ClientOptions { chunk_size: 100_000, ..Default::default() };

    // The third PATCH arrives whole but its answer is lost: the upload goes on with the same
    // (unreplayable) stream, because the registry has exactly what was sent.
    let up = upload_peer(|i, body| (i == 2).then_some(body.len())).await;
    let c = client(&up.peer.addr, opts());
    c.push_blob(&repo("app"), &d, blob.len() as u64, stream_of(&blob)).await.unwrap();
    assert!(*up.stored.lock().unwrap() == *blob);
    assert_eq!(up.peer.count("/v2/app/blobs/uploads/s1"), 6 + 1 + 1, "6 PATCHes, 1 status, 1 PUT");

    // The third PATCH is cut after 30 000 bytes: a reopenable source resumes at 230 000.
    let up = upload_peer(|i, _| (i == 2).then_some(30_000)).await;
    let c = client(&up.peer.addr, opts());
    let opened = Arc::new(Mutex::new(Vec::new()));
    let (b, o) = (blob.clone(), opened.clone());
    let opener: wharf_client::BlobOpener = Box::new(move |offset| {
        o.lock().unwrap().push(offset);
        let s = stream_of(&b[offset as usize..]);
        Box::pin(async move { Ok(s) })
    });
    c.push_blob_resumable(&repo("app"), &d, blob.len() as u64, opener).await.unwrap();
    assert_eq!(*opened.lock().unwrap(), [0, 230_000]);
    assert!(*up.stored.lock().unwrap() == *blob);

    // The same cut with a stream that cannot be read again: a clear error, nothing published.
    let up = upload_peer(|i, _| (i == 2).then_some(30_000)).await;
    let c = client(&up.peer.addr, opts());
    let e = c.push_blob(&repo("app"), &d, blob.len() as u64, stream_of(&blob)).await.unwrap_err();
    assert!(e.to_string().contains("interrupted at byte 230000"), "{e}");
    assert!(!up.peer.requests().iter().any(|r| r.method == "PUT"));
}
