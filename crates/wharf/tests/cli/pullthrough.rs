//! Pull-through (`proxy_tags = true`) and streaming, single-flight fill, against CNCF
//! distribution 2.8 as the upstream and skopeo, podman and plain HTTP as clients.
//!
//! Streaming and single flight are shown with a loopback TCP proxy between Wharf and the
//! upstream that counts the upstream's blob requests, can hold the upstream's answer halfway
//! (so a client that receives bytes meanwhile proves the blob streams) and can corrupt it.
//! No test asserts a timing: only the order of events.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use wharf_oci::Algorithm;
use wharf_testkit::{Blob, Distribution, Podman, TestImage, run_ok, seeded_bytes, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};
use crate::sparse::inspect_json;

fn pull_through_config(upstream: &str, extra: &str) -> String {
    format!(
        "[index_policy]\ndefault = \"complete\"\n\n[[upstreams]]\npattern = \"hub/**\"\n\
         url = \"docker://{upstream}/vendor\"\nproxy_tags = true\n{extra}"
    )
}

fn curl(args: &[&str]) -> (String, i32) {
    let out = std::process::Command::new("curl").args(args).output().expect("curl");
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code().unwrap_or(-1))
}

#[test]
fn pull_through_by_tag_with_skopeo_and_podman_on_sqlite() {
    pull_through_by_tag(Backend::Sqlite);
}

#[test]
fn pull_through_by_tag_with_skopeo_and_podman_on_postgres() {
    pull_through_by_tag(Backend::Postgres);
}

fn pull_through_by_tag(backend: Backend) {
    let upstream = Distribution::start();
    let image = TestImage::builder().seed(31).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    // tag_ttl 0s: every request by tag asks the upstream, so the test sees each behaviour at once.
    let server = WharfServer::start(backend, &pull_through_config(&upstream.addr, "tag_ttl = \"0s\"\n"));

    // Nothing was mirrored: by tag, Wharf answers the upstream's index, byte for byte, and
    // stores it sparse although the repository's policy is `complete`.
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("hub/app:v1")), image.index.bytes);
    let report = inspect_json(&server, "hub/app:v1");
    assert_eq!(report["absent_children"], 4, "{report}");

    // podman pulls a platform nobody mirrored: the child and its blobs fill on demand.
    let podman = Podman::new();
    let remote = format!("{}/hub/app:v1", server.addr);
    run_ok(podman.podman(["pull", "--tls-verify=false", "--arch", "s390x", &remote]));
    let after = inspect_json(&server, "hub/app:v1");
    let present: Vec<(String, bool)> = after["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["platform"].as_str().unwrap_or("").to_owned(), c["present"].as_bool().unwrap()))
        .collect();
    assert_eq!(present.iter().filter(|(_, p)| *p).count(), 1, "{present:?}");
    assert!(present.contains(&("linux/s390x".into(), true)), "{present:?}");

    // A tag the upstream does not have: 404 MANIFEST_UNKNOWN naming the upstream.
    let (body, _) =
        curl(&["-s", "-w", "\n%{http_code}", &format!("http://{}/v2/hub/app/manifests/nope", server.addr)]);
    assert!(body.ends_with("\n404") && body.contains("MANIFEST_UNKNOWN"), "{body}");
    assert!(body.contains(&upstream.addr), "the error names the upstream: {body}");

    // The upstream moves the tag: the next pull by tag (TTL expired) sees the new index, and
    // the tag cache does not hide it.
    let v2 = TestImage::builder().seed(32).tag("v1").build();
    rt.block_on(upstream.client().push_image("vendor/app", &v2)).unwrap();
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("hub/app:v1")), v2.index.bytes);
    // Move it back so that what is cached below is the image podman pulled.
    rt.block_on(upstream.client().push_index("vendor/app", &image)).unwrap();
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("hub/app:v1")), image.index.bytes);

    // Upstream gone: what is here is still served (tag, child, blobs), and the failure logged.
    drop(upstream);
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("hub/app:v1")), image.index.bytes);
    let podman = Podman::new();
    run_ok(podman.podman(["pull", "--tls-verify=false", "--arch", "s390x", &remote]));
    assert!(server.log().contains("upstream unavailable"), "{}", server.log());
}

/// A loopback TCP proxy in front of the upstream (see the module comment).
struct Tap {
    addr: String,
    state: Arc<TapState>,
}

struct TapState {
    upstream: String,
    /// Requests whose request line contains this are counted.
    needle: Vec<u8>,
    count: AtomicUsize,
    /// Per connection, after this many bytes of answer, wait until released.
    hold_after: AtomicU64,
    held: Mutex<(bool, bool)>, // (someone is held, released)
    cond: Condvar,
    /// Per connection, flip the answer's byte at this offset.
    corrupt_at: AtomicU64,
}

impl Tap {
    fn start(upstream: &str, needle: &str) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(TapState {
            upstream: upstream.to_owned(),
            needle: needle.as_bytes().to_vec(),
            count: AtomicUsize::new(0),
            hold_after: AtomicU64::new(u64::MAX),
            held: Mutex::new((false, false)),
            cond: Condvar::new(),
            corrupt_at: AtomicU64::new(u64::MAX),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || s.relay(conn));
            }
        });
        Tap { addr, state }
    }

    fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    fn wait_until_held(&self) {
        let mut g = self.state.held.lock().unwrap();
        while !g.0 {
            g = self.state.cond.wait(g).unwrap();
        }
    }

    fn release(&self) {
        self.state.hold_after.store(u64::MAX, Ordering::SeqCst);
        self.state.held.lock().unwrap().1 = true;
        self.state.cond.notify_all();
    }
}

impl TapState {
    fn relay(self: Arc<Self>, client: TcpStream) {
        let Ok(server) = TcpStream::connect(&self.upstream) else { return };
        let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let me = self.clone();
        // Requests: counted, passed on.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut tail: Vec<u8> = Vec::new();
            while let Ok(n) = c_read.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut window = std::mem::take(&mut tail);
                window.extend_from_slice(&buf[..n]);
                me.count.fetch_add(
                    window.windows(me.needle.len()).filter(|w| *w == me.needle.as_slice()).count(),
                    Ordering::SeqCst,
                );
                tail = window[window.len().saturating_sub(me.needle.len() - 1)..].to_vec();
                if s_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = s_write.shutdown(std::net::Shutdown::Write);
        });
        // Answers: passed on, held or corrupted as configured.
        let (mut s_read, mut c_write) = (server, client);
        let mut buf = vec![0u8; 64 * 1024];
        let mut relayed = 0u64;
        while let Ok(n) = s_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            let corrupt = self.corrupt_at.load(Ordering::SeqCst);
            if (relayed..relayed + n as u64).contains(&corrupt) {
                buf[(corrupt - relayed) as usize] ^= 0xff;
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
            relayed += n as u64;
            if relayed >= self.hold_after.load(Ordering::SeqCst) {
                let mut g = self.held.lock().unwrap();
                g.0 = true;
                self.cond.notify_all();
                while !g.1 {
                    g = self.cond.wait(g).unwrap();
                }
            }
        }
        let _ = c_write.shutdown(std::net::Shutdown::Write);
    }
}

#[test]
fn six_concurrent_gets_of_a_cold_blob_share_one_upstream_fetch_and_stream() {
    const SIZE: usize = 128 << 20;
    let upstream = Distribution::start();
    let blob = Blob::new("application/octet-stream", seeded_bytes(7, SIZE));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_blob("vendor/big", &blob)).unwrap();
    let tap = Tap::start(&upstream.addr, &format!("GET /v2/vendor/big/blobs/{}", blob.digest));
    let server = WharfServer::start(Backend::Sqlite, &pull_through_config(&tap.addr, ""));
    let url = format!("http://{}/v2/hub/big/blobs/{}", server.addr, blob.digest);
    let expected = blob.digest.clone();
    drop(blob);

    // The upstream's answer stops after 4 MiB (less than the fill keeps in memory for its
    // readers) until the test lets it go on: every client must have received bytes by then.
    tap.state.hold_after.store(4 << 20, Ordering::SeqCst);
    let (first_tx, first_rx) = std::sync::mpsc::channel::<usize>();
    let http = reqwest::Client::new();
    let downloads: Vec<_> = (0..6)
        .map(|i| {
            let (http, url, first_tx) = (http.clone(), url.clone(), first_tx.clone());
            rt.spawn(async move {
                let mut resp = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("status {}", resp.status()));
                }
                let mut hasher = Algorithm::Sha256.hasher();
                let mut n = 0usize;
                while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
                    if n == 0 {
                        let _ = first_tx.send(i);
                    }
                    n += chunk.len();
                    hasher.update(&chunk);
                }
                Ok::<_, String>((n, hasher.finish().to_string()))
            })
        })
        .collect();
    drop(first_tx);
    let mut first: Vec<usize> =
        (0..6).map(|_| first_rx.recv().expect("a client got its first byte")).collect();
    first.sort();
    assert_eq!(first, vec![0, 1, 2, 3, 4, 5]);
    // Events in order: six first bytes arrived while the upstream transfer was still held.
    tap.wait_until_held();
    tap.release();
    for d in downloads {
        let (n, digest) = rt.block_on(d).unwrap().unwrap();
        assert_eq!((n, digest.as_str()), (SIZE, expected.as_str()));
    }
    assert_eq!(tap.count(), 1, "one upstream fetch for six clients");

    // Stored: a seventh client is served from Wharf without asking the upstream.
    let (_, code) = curl(&["-sf", "-o", "/dev/null", &url]);
    assert_eq!(code, 0);
    assert_eq!(tap.count(), 1);
}

#[test]
fn a_wrong_hash_upstream_breaks_the_transfer_and_stores_nothing() {
    const SIZE: usize = 4 << 20;
    let upstream = Distribution::start();
    let blob = Blob::new("application/octet-stream", seeded_bytes(9, SIZE));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_blob("vendor/bad", &blob)).unwrap();
    let tap = Tap::start(&upstream.addr, &format!("GET /v2/vendor/bad/blobs/{}", blob.digest));
    tap.state.corrupt_at.store(2 << 20, Ordering::SeqCst);
    let server = WharfServer::start(Backend::Sqlite, &pull_through_config(&tap.addr, ""));
    let url = format!("http://{}/v2/hub/bad/blobs/{}", server.addr, blob.digest);

    // The client gets a 200 and bytes, but never a complete body.
    let got = rt.block_on(async {
        let resp = reqwest::get(&url).await.map_err(|e| e.to_string())?;
        resp.bytes().await.map_err(|e| e.to_string())
    });
    assert!(
        got.is_err(),
        "a transfer of wrong bytes must fail, got {} bytes",
        got.map(|b| b.len()).unwrap_or(0)
    );
    assert_eq!(tap.count(), 1);
    assert!(server.log().contains("nothing stored"), "{}", server.log());

    // Nothing was stored: with the upstream fixed, the next request fetches it again, whole.
    tap.state.corrupt_at.store(u64::MAX, Ordering::SeqCst);
    let good = rt.block_on(async { reqwest::get(&url).await.unwrap().bytes().await.unwrap() });
    assert_eq!(good.len(), SIZE);
    assert_eq!(wharf_testkit::sha256_digest(&good), blob.digest);
    assert_eq!(tap.count(), 2);
}
