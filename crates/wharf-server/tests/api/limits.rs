//! Connection limits and client timeouts (`wharf_server::Limits`): hundreds of idle or
//! slowloris connections never starve a normal client, a stalled or trickling body is ended
//! without leaving anything behind, oversized heads and manifests are refused before they are read.
//! Everything is bounded in time; no timing is asserted.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wharf_metadata::MetadataStore;
use wharf_oci::Digest;
use wharf_registry::{Registry, RegistryConfig};
use wharf_server::Limits;
use wharf_storage::BlobStore;

/// An in-process server (SQLite) with small limits.
struct Limited {
    addr: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_CONNECTIONS: usize = 40;
/// Bytes per second, judged over one second of waiting for a body.
const MIN_BODY_RATE: u64 = 16 * 1024;

impl Limited {
    async fn start() -> Limited {
        Limited::start_with_limits(RegistryConfig::default(), limits()).await
    }

    async fn start_with_limits(config: RegistryConfig, limits: Limits) -> Limited {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("storage")).await.unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("meta.db").display());
        let meta = MetadataStore::connect(&url).await.unwrap();
        let registry = Registry::new(blobs, meta, config);
        // As `wharf serve` binds: a backlog that holds the connections waiting for a slot
        // (the default of 128 would leave the excess half-open, unknown to the server).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            wharf_server::serve_with_limits(listener, registry, None, None, Default::default(), limits, stop)
                .await
                .unwrap();
        });
        Limited { addr, client: reqwest::Client::new(), _dir: dir, _stop: tx }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") { path.to_owned() } else { format!("http://{}{path}", self.addr) }
    }
}

/// The small limits most tests here run with.
fn limits() -> Limits {
    Limits {
        header_read_timeout: TIMEOUT,
        body_idle_timeout: TIMEOUT,
        write_idle_timeout: TIMEOUT,
        max_connections: MAX_CONNECTIONS,
        max_header_bytes: 8 * 1024,
        min_body_rate: MIN_BODY_RATE,
        body_rate_window: Duration::from_secs(1),
        max_connections_per_address: 0,
    }
}

/// A new upload session, and a raw connection that has sent the head of a `PATCH` announcing
/// a 1 MiB chunk of it (the body is the caller's to send, or not).
async fn start_a_mib_chunk(s: &Limited) -> (String, TcpStream) {
    let resp = s.client.post(s.url("/v2/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let mut conn = TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: 0-1048575\r\nContent-Length: 1048576\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    (location, conn)
}

/// After a refused chunk: the upload session at `location` holds nothing, and a whole blob of
/// `size` bytes sent through it is stored and served back.
async fn session_is_back_at_0_and_takes_a_blob(s: &Limited, location: &str, size: usize) {
    let status = s.client.get(s.url(location)).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-0");
    let blob = vec![9u8; size];
    let digest = Digest::sha256_of(&blob);
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = s
        .client
        .put(s.url(&format!("{location}{sep}digest={digest}")))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED, "{}", done.text().await.unwrap());
    let got = s.client.get(s.url(&format!("/v2/app/blobs/{digest}"))).send().await.unwrap();
    assert_eq!(got.bytes().await.unwrap(), blob);
}

/// Reads until the server closes the connection (EOF or reset); returns what it sent.
/// Panics if it is still open after `bound`.
async fn until_closed(conn: &mut (impl AsyncRead + Unpin), bound: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read).await.expect("the server never closed the connection");
    got
}

/// A normal client's round trip: push a blob, read it back.
async fn push_and_pull(s: &Limited, repo: &str, bytes: &[u8]) {
    let digest = Digest::sha256_of(bytes);
    let resp = s
        .client
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
    let got = s.client.get(s.url(&format!("/v2/{repo}/blobs/{digest}"))).send().await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_do_not_starve_clients() {
    let s = Limited::start().await;
    // Ten times the connection limit: half never send a byte, half trickle a header line
    // every 300 ms and never finish their request head.
    let mut attackers = Vec::new();
    for i in 0..10 * MAX_CONNECTIONS {
        let addr = s.addr.clone();
        attackers.push(tokio::spawn(async move {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            if i % 2 == 1 {
                let trickle = async {
                    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await?;
                    loop {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        conn.write_all(b"X-Slow: y\r\n").await?;
                    }
                };
                // Ends when the server closes the connection (the write fails), or after the
                // bound (then `until_closed` below fails the test).
                let _: Result<std::io::Result<()>, _> =
                    tokio::time::timeout(Duration::from_secs(120), trickle).await;
            }
            until_closed(&mut conn, Duration::from_secs(120)).await
        }));
    }
    // Let the attackers take every connection slot and fill the backlog first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let resp = s.client.get(s.url("/v2/")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        push_and_pull(&s, "app", b"served despite the slow clients").await;
    })
    .await
    .expect("a normal client was starved by idle and slow connections");
    for attacker in attackers {
        let answer = attacker.await.unwrap();
        // Closed without a response to a request that never arrived (or with a 408).
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "an unfinished request got: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Every slot came back: a burst of normal clients is served.
    let mut clients = Vec::new();
    for i in 0..MAX_CONNECTIONS {
        let (client, url) = (reqwest::Client::new(), s.url(&format!("/v2/app/tags/list?n={i}")));
        clients.push(tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) }));
    }
    for c in clients {
        let status = tokio::time::timeout(Duration::from_secs(60), c).await.unwrap().unwrap().unwrap();
        assert_ne!(status.as_u16() / 100, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_do_not_hold_every_slot() {
    let s = Limited::start().await;
    // Much larger than what the socket buffers of both ends hold.
    let blob: Vec<u8> = (0..16u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let digest = Digest::sha256_of(&blob);
    // Its own client, dropped after the push: no kept-alive connection holds a slot.
    let uploader = reqwest::Client::new();
    let resp = uploader
        .post(s.url(&format!("/v2/app/blobs/uploads/?digest={digest}")))
        .body(blob.clone())
        .send()
        .await;
    assert_eq!(resp.unwrap().status(), StatusCode::CREATED);
    drop(uploader);
    // Every slot: a GET of the blob that never reads a byte of the answer.
    let mut stalled = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        // A small receive buffer (no autotuning): the server's writes block soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut conn = socket.connect(s.addr.parse().unwrap()).await.unwrap();
        conn.write_all(format!("GET /v2/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stalled.push(conn);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A new client is served once the stalled ones are disconnected.
    let fresh = reqwest::Client::new();
    let got = tokio::time::timeout(Duration::from_secs(120), async {
        fresh.get(s.url(&format!("/v2/app/blobs/{digest}"))).send().await.unwrap().bytes().await.unwrap()
    })
    .await
    .expect("clients that stopped reading held every connection slot");
    assert!(got == blob, "the blob read back differs");
    // Each stalled connection was cut: its response ends before the blob does. (Reading one
    // that is not cut yet would let its response go on: first give the last of them, which
    // may have waited for a slot, its timeout.)
    tokio::time::sleep(3 * TIMEOUT).await;
    for mut conn in stalled {
        let got = until_closed(&mut conn, Duration::from_secs(60)).await;
        assert!(got.len() < blob.len(), "a stalled reader got the whole blob");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_connection_without_a_next_request_is_closed() {
    let s = Limited::start().await;
    let mut conn = TcpStream::connect(&s.addr).await.unwrap();
    conn.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let rest = until_closed(&mut conn, Duration::from_secs(60)).await;
    assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&rest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_body_is_ended_and_nothing_is_kept() {
    let s = Limited::start().await;
    // A chunk that announces 1 MiB, sends 64 KiB and stops.
    let (location, mut conn) = start_a_mib_chunk(&s).await;
    conn.write_all(&vec![7u8; 64 * 1024]).await.unwrap();
    let answer = until_closed(&mut conn, Duration::from_secs(60)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BLOB_UPLOAD_INVALID") && answer.contains("sent nothing for"), "{answer}");
    // The session is where it was before the chunk: the client can resume from 0.
    session_is_back_at_0_and_takes_a_blob(&s, &location, 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_below_the_minimum_rate_is_ended_and_nothing_is_kept() {
    let s = Limited::start().await;
    // A chunk that announces 1 MiB and sends it 100 bytes at a time, one every 20 ms (5 KB/s):
    // never idle for the idle timeout, far below the minimum rate.
    let (location, conn) = start_a_mib_chunk(&s).await;
    let (mut reader, mut writer) = conn.into_split();
    let trickle = tokio::spawn(async move {
        // Bounded: 1,500 sends (30 s) at most; stops when the server has closed.
        for _ in 0..1500 {
            if writer.write_all(&[7u8; 100]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let answer = until_closed(&mut reader, Duration::from_secs(60)).await;
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("BLOB_UPLOAD_INVALID") && answer.contains("below the minimum"), "{answer}");
    // The session is where it was before the chunk, and a client at loopback speed is well
    // above the minimum: the whole blob goes through the same session.
    session_is_back_at_0_and_takes_a_blob(&s, &location, 4 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_no_more_connections_than_its_share() {
    // Long timeouts: the held connections must stay open while the test runs.
    let limits =
        Limits { header_read_timeout: Duration::from_secs(60), max_connections_per_address: 3, ..limits() };
    let s = Limited::start_with_limits(RegistryConfig::default(), limits).await;
    let request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n";
    // Three kept-alive connections, each served once and left open.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(&s.addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        held.push(conn);
    }
    // The fourth from the same address is answered 429 in the spec's format and closed.
    let mut fourth = TcpStream::connect(&s.addr).await.unwrap();
    fourth.write_all(request).await.unwrap();
    let answer = until_closed(&mut fourth, Duration::from_secs(30)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("TOOMANYREQUESTS"), "{answer}");
    // Once one of the three is closed, a new connection is served again.
    drop(held.pop());
    let served = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let resp = s.client.get(s.url("/v2/")).send().await;
            if resp.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the freed slot was never given to a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_gets_431() {
    let s = Limited::start().await;
    let mut conn = TcpStream::connect(&s.addr).await.unwrap();
    let big = "a".repeat(16 * 1024);
    // The server may answer and close before it has read all of this.
    let _ = conn.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    let answer = until_closed(&mut conn, Duration::from_secs(60)).await;
    assert!(answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
    // Ordinary requests are unaffected.
    let resp = s
        .client
        .request(Method::GET, s.url("/v2/"))
        .header("x-small", "b".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_is_refused_before_its_body_is_read() {
    let s = Limited::start().await;
    for expect in ["Expect: 100-continue\r\n", ""] {
        let mut conn = TcpStream::connect(&s.addr).await.unwrap();
        // 1 GiB announced, not a byte of it sent: only an answer that did not wait for the
        // body can arrive.
        let head = format!(
            "PUT /v2/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n{expect}\
             Content-Length: 1073741824\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let answer = until_closed(&mut conn, Duration::from_secs(60)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{expect:?}: {answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(answer.contains("MANIFEST_INVALID"), "{answer}");
    }
    let resp = s.client.get(s.url("/v2/app/manifests/v1")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}
