//! Faults of the machine under a running `wharf serve`: the data directory's disk fills up.
//!
//! Mounting a tmpfs needs root (CI runs as root). Without it the test fails under `CI=true`
//! and is skipped, saying so, elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wharf_testkit::{Blob, RegistryClient, TestImage, seeded_bytes};

use crate::server::{Backend, WharfServer};

/// A tmpfs of `size` mounted at a fresh directory, unmounted when dropped (also when the test
/// fails).
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (after saying why) when not root and not under CI; panics under `CI=true`.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            let why = "mounting a tmpfs for the disk-full test needs root";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why}; CI runs the tests as root");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::create_dir(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("mount must be installed");
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Some(Tmpfs { path, _dir: dir })
    }

    /// Bytes free for an unprivileged writer.
    pub fn free(&self) -> u64 {
        let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(&self.path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        it.next().unwrap() * it.next().unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a server that did not stop): detach it now, freed when unused.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

async fn expect_disk_full(resp: reqwest::Response) {
    let status = resp.status();
    let body: Value = resp.json().await.expect("the spec's JSON error body");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("storage is full") && message.contains("no space left"), "{message}");
}

#[test]
fn disk_full_refuses_pushes_cleanly_and_recovers() {
    let Some(disk) = Tmpfs::mount("32m") else { return };
    let server = WharfServer::start_in(Backend::Sqlite, "", &disk.path);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(&server.addr);

    let image = TestImage::builder().seed(71).tag("v1").build();
    rt.block_on(client.push_image("team/app", &image)).unwrap();

    // Monolithic pushes of 3 MiB until the disk is full.
    let mut acknowledged = Vec::new();
    let refused = rt.block_on(async {
        for seed in 0..40u64 {
            let blob = seeded_bytes(seed, 3 << 20);
            let digest = wharf_testkit::sha256_digest(&blob);
            let free_before = disk.free();
            let resp = client
                .request(Method::POST, &format!("/v2/fill/blobs/blobs/uploads/?digest={digest}"))
                .body(blob.clone())
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::CREATED {
                acknowledged.push((digest, blob));
                continue;
            }
            expect_disk_full(resp).await;
            return (digest, free_before);
        }
        panic!("40 pushes of 3 MiB fitted on a 32 MiB disk");
    });
    let (refused_digest, free_before) = refused;
    assert!(!acknowledged.is_empty());

    // Nothing of the refused push is visible, and its temporary file is gone: the space is back.
    let head =
        rt.block_on(client.request(Method::HEAD, &format!("/v2/fill/blobs/blobs/{refused_digest}")).send());
    assert_eq!(head.unwrap().status(), StatusCode::NOT_FOUND);
    let storage = disk.path.join("storage");
    assert_eq!(files_under(&storage.join("tmp")), Vec::<PathBuf>::new());
    assert_eq!(files_under(&storage.join("uploads")), Vec::<PathBuf>::new());
    let free_after = disk.free();
    assert!(free_after + (256 << 10) >= free_before, "free before {free_before}, after {free_after}");

    // A chunked upload that does not fit: refused the same way, the session keeps what it
    // had (nothing), and cancelling it leaves no file behind.
    rt.block_on(async {
        let start = client.request(Method::POST, "/v2/fill/blobs/blobs/uploads/").send().await.unwrap();
        assert_eq!(start.status(), StatusCode::ACCEPTED);
        let location = start.headers()["location"].to_str().unwrap().to_owned();
        let chunk = seeded_bytes(1000, (free_after as usize) + (1 << 20));
        let resp = client
            .request(Method::PATCH, &location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", chunk.len() - 1))
            .body(chunk)
            .send()
            .await
            .unwrap();
        expect_disk_full(resp).await;
        let status = client.request(Method::GET, &location).send().await.unwrap();
        assert_eq!(status.status(), StatusCode::NO_CONTENT);
        assert_eq!(status.headers()["range"], "0-0");
        let cancel = client.request(Method::DELETE, &location).send().await.unwrap();
        assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    });
    assert_eq!(files_under(&storage.join("uploads")), Vec::<PathBuf>::new());
    assert!(disk.free() + (256 << 10) >= free_before);

    // A push that fits succeeds: a blob of a quarter of what is free, and a whole image.
    let small = Blob::new("application/octet-stream", seeded_bytes(2000, (disk.free() / 4) as usize));
    rt.block_on(client.push_blob("fill/blobs", &small)).unwrap();
    let image2 = TestImage::builder().seed(72).tag("v2").build();
    rt.block_on(client.push_image("team/app", &image2)).unwrap();

    // Everything acknowledged reads back byte for byte.
    rt.block_on(async {
        for (digest, blob) in &acknowledged {
            assert_eq!(&client.get_blob("fill/blobs", digest).await.unwrap(), blob);
        }
        assert_eq!(client.get_blob("fill/blobs", &small.digest).await.unwrap(), small.bytes);
        for (tag, img) in [("v1", &image), ("v2", &image2)] {
            let (_, bytes) = client.get_manifest("team/app", tag).await.unwrap();
            assert_eq!(bytes, img.index.bytes);
        }
    });
    assert!(server.log().contains("storage full"), "{}", server.log());
    drop(server);
}

/// Pushes unique images into `repo` until `stop`; returns the acknowledged ones (the index
/// push answered 201) and every failure seen on the way.
async fn push_until(
    client: RegistryClient,
    repo: String,
    first_seed: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> (Vec<TestImage>, Vec<wharf_testkit::PushError>) {
    let (mut done, mut failures) = (Vec::new(), Vec::new());
    let mut seed = first_seed;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        seed += 1;
        let image = TestImage::builder()
            .seed(seed)
            .tag(&format!("s{seed}"))
            .platforms(&["linux/amd64", "linux/arm64"])
            .build();
        match client.push_image(&repo, &image).await {
            Ok(()) => {
                done.push(image);
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => {
                failures.push(e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    (done, failures)
}

#[test]
fn postgres_restart_under_pushes_needs_no_wharf_restart() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    let pg = wharf_testkit::PrivatePostgres::start();
    let server = WharfServer::start(Backend::FromConfig, &format!("database = {:?}\n", pg.url()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = (0..3u64)
        .map(|i| {
            let client = RegistryClient::new(&server.addr);
            rt.spawn(push_until(client, format!("load/p{i}"), 1000 * (i + 1), stop.clone(), acked.clone()))
        })
        .collect();
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "pushes stalled at {} (wanted {n})",
                acked.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(6);
    // Connections are cut mid-request; for two seconds nothing listens.
    pg.restart(Duration::from_secs(2));
    let after_restart = acked.load(Ordering::SeqCst);
    // The same server goes on taking pushes.
    wait_for(after_restart + 6);
    stop.store(true, Ordering::SeqCst);
    let mut images = Vec::new();
    let mut failures = Vec::new();
    for p in pushers {
        let (done, failed) = rt.block_on(p).unwrap();
        images.push(done);
        failures.extend(failed);
    }
    // Pushes in the gap failed cleanly: 503 with the spec's UNAVAILABLE error, or a
    // connection the server closed; never a 500. (A HEAD, a blob's existence check, has the
    // status only: HTTP gives HEAD responses no body.)
    for f in &failures {
        if let wharf_testkit::PushError::Status { method, status, body, .. } = f {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{f}");
            assert!(*method == Method::HEAD || body.contains("UNAVAILABLE"), "{f}");
        }
    }
    eprintln!("{} pushes failed during the restart: {failures:#?}", failures.len());
    // Every acknowledged push reads back, byte for byte.
    let client = RegistryClient::new(&server.addr);
    rt.block_on(async {
        for (i, done) in images.iter().enumerate() {
            for image in done {
                let (_, bytes) = client.get_manifest(&format!("load/p{i}"), &image.tag).await.unwrap();
                assert_eq!(bytes, image.index.bytes);
                for blob in image.blobs() {
                    assert_eq!(
                        client.get_blob(&format!("load/p{i}"), &blob.digest).await.unwrap(),
                        blob.bytes
                    );
                }
            }
        }
    });
    drop(server);
    drop(pg);
}

/// A delay in `0..max_ms` that differs between runs (printed, so that a failure can be
/// replayed by hand).
fn random_delay(max_ms: u64) -> std::time::Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let ms = u64::from(nanos) % max_ms.max(1);
    eprintln!("SIGKILL after {ms} ms");
    std::time::Duration::from_millis(ms)
}

/// `wharf ARGS --data-dir … [--database …]` against `server`'s stores.
fn wharf_cmd(server: &WharfServer, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(args).arg("--data-dir").arg(server.data_dir()).env("WHARF_LOG", "warn");
    if let Some(db) = server.database() {
        cmd.args(["--database", &format!("postgres://postgres@127.0.0.1:5432/{db}")]);
    }
    cmd
}

fn assert_fsck_clean(server: &WharfServer) {
    let out = wharf_cmd(server, &["fsck", "--json"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fsck printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "fsck: {report}");
    assert_eq!(report["problems"], serde_json::json!([]));
}

fn kill_during_gc(backend: Backend) {
    let server = WharfServer::start(backend, "");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(&server.addr);
    let kept: Vec<TestImage> =
        (0..3).map(|i| TestImage::builder().seed(101 + i).tag(&format!("v{i}")).build()).collect();
    let strays: Vec<Blob> =
        (0..150).map(|i| Blob::new("application/octet-stream", seeded_bytes(5000 + i, 16 << 10))).collect();
    let dropped = TestImage::builder().seed(109).tag("gone").build();
    rt.block_on(async {
        for image in &kept {
            client.push_image("keep/app", image).await.unwrap();
        }
        for blob in &strays {
            client.push_blob("junk/strays", blob).await.unwrap();
        }
        client.push_image("junk/old", &dropped).await.unwrap();
        let resp = client
            .request(Method::DELETE, &format!("/v2/junk/old/manifests/{}", dropped.index.digest))
            .send()
            .await;
        assert_eq!(resp.unwrap().status(), StatusCode::ACCEPTED);
    });
    let read_back = || {
        rt.block_on(async {
            for image in &kept {
                let (_, bytes) = client.get_manifest("keep/app", &image.tag).await.unwrap();
                assert_eq!(bytes, image.index.bytes);
                for blob in image.blobs() {
                    assert_eq!(client.get_blob("keep/app", &blob.digest).await.unwrap(), blob.bytes);
                }
            }
        })
    };
    for round in 0..3u64 {
        let mut gc = wharf_cmd(&server, &["gc", "--grace", "0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(random_delay(60 + 120 * round));
        let _ = gc.kill();
        gc.wait().unwrap();
        assert_fsck_clean(&server);
        read_back();
    }
    // A run to the end removes all the garbage.
    let out = wharf_cmd(&server, &["gc", "--grace", "0s"]).output().unwrap();
    assert!(out.status.success(), "gc rerun: {}", String::from_utf8_lossy(&out.stderr));
    rt.block_on(async {
        for blob in &strays {
            assert!(!client.blob_exists("junk/strays", &blob.digest).await.unwrap(), "{}", blob.digest);
        }
    });
    assert_fsck_clean(&server);
    read_back();
}

#[test]
fn kill_9_during_gc_leaves_a_clean_registry_sqlite() {
    kill_during_gc(Backend::Sqlite);
}

#[test]
fn kill_9_during_gc_leaves_a_clean_registry_postgres() {
    kill_during_gc(Backend::Postgres);
}

#[test]
fn kill_9_during_a_mirror_run_then_the_next_run_completes() {
    use crate::mirrors::{KEPT, mirror_config, present_platforms, status, wait_for_runs};

    let upstream = wharf_testkit::Distribution::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Three tags with 1 MiB layers: a run long enough to be cut somewhere inside.
    let images: Vec<TestImage> = (1..=3)
        .map(|i| {
            TestImage::builder().seed(120 + i).tag(&format!("v{i}")).layers(2).layer_size(1 << 20).build()
        })
        .collect();
    for image in &images {
        rt.block_on(upstream.client().push_image("vendor/app", image)).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = mirror_config(&upstream, "");
    let mut first = WharfServer::start_in(Backend::Sqlite, &config, &data);
    // The run at start is under way (or already done, on a fast machine): cut it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while status(&first, None)["mirrors"][0]["state"] != "running" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(random_delay(400));
    first.kill();
    assert_fsck_clean(&first);
    drop(first);

    // Started again on the same data, the run at start completes the mirror.
    let second = WharfServer::start_in(Backend::Sqlite, &config, &data);
    let m = wait_for_runs(&second, "vendor-app", 1, None);
    assert_eq!(m["last_run"]["ok"], true, "{m}");
    assert_eq!(m["last_run"]["images"], 3, "{m}");
    let client = RegistryClient::new(&second.addr);
    for image in &images {
        let (_, bytes) = rt.block_on(client.get_manifest("mirror/app", &image.tag)).unwrap();
        assert_eq!(bytes, image.index.bytes, "{}", image.tag);
        assert_eq!(present_platforms(&second, &format!("mirror/app:{}", image.tag)), KEPT);
        for p in KEPT {
            for blob in image.platform(p).blobs() {
                assert_eq!(rt.block_on(client.get_blob("mirror/app", &blob.digest)).unwrap(), blob.bytes);
            }
        }
    }
    assert_fsck_clean(&second);
}
