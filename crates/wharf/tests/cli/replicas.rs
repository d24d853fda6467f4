//! Beyond one machine: `wharf serve` replicas sharing a Garage bucket and a PostgreSQL
//! database, behind nginx round-robin, driven by skopeo and over plain HTTP.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use wharf_testkit::sign::{CosignKey, cosign_style_signature};
use wharf_testkit::{Blob, Garage, Nginx, RegistryClient, TestImage, run_ok, skopeo, skopeo_inspect_raw};

use crate::server::{Backend, SharedDatabase, WharfServer};

/// Replicas over one bucket and one database, and a balancer in front of them.
struct Cluster {
    nginx: Nginx,
    replicas: Vec<WharfServer>,
    config: String,
    db: SharedDatabase,
    garage: Garage,
}

impl Cluster {
    fn start(replicas: usize) -> Cluster {
        Cluster::start_with(replicas, "")
    }

    /// Replicas whose configuration has `extra` (whole TOML tables) too.
    fn start_with(replicas: usize, extra: &str) -> Cluster {
        let garage = Garage::start();
        let db = SharedDatabase::create();
        let config = format!(
            "database = \"{}\"\n{extra}\n[index_policy]\ndefault = \"sparse\"\n{}",
            db.url,
            garage.storage_toml("registry")
        );
        let replicas: Vec<WharfServer> =
            (0..replicas).map(|_| WharfServer::start(Backend::FromConfig, &config)).collect();
        let nginx = Nginx::round_robin(&replicas.iter().map(|r| r.addr.clone()).collect::<Vec<_>>());
        Cluster { nginx, replicas, config, db, garage }
    }

    /// A client of each of the first two replicas, to write through one and read through the
    /// other.
    fn first_two_clients(&self) -> (RegistryClient, RegistryClient) {
        (RegistryClient::new(&self.replicas[0].addr), RegistryClient::new(&self.replicas[1].addr))
    }

    fn front(&self, rest: &str) -> String {
        format!("docker://{}/{rest}", self.nginx.addr)
    }

    fn config_file(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("wharf.toml");
        std::fs::write(&path, &self.config).unwrap();
        path
    }
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(151).wrapping_add(seed) ^ (i >> 11) as u8).collect()
}

fn digest_of(bytes: &[u8]) -> String {
    wharf_testkit::sha256_digest(bytes)
}

#[test]
fn skopeo_copy_all_in_and_out_through_the_balancer_is_byte_identical() {
    let cluster = Cluster::start(2);
    let image = TestImage::builder().seed(81).tag("v1").attestations(true).build();
    let src = tempfile::tempdir().unwrap();
    image.write_oci_layout(src.path());
    run_ok(
        skopeo(["copy", "--all", "--dest-tls-verify=false"])
            .arg(image.oci_ref(src.path()))
            .arg(cluster.front("team/app:v1")),
    );
    // Every replica serves the index and each child byte for byte.
    for r in &cluster.replicas {
        assert_eq!(skopeo_inspect_raw(&r.docker_ref("team/app:v1")), image.index.bytes);
        for child in &image.children {
            let got = skopeo_inspect_raw(&r.docker_ref(&format!("team/app@{}", child.manifest.digest)));
            assert_eq!(got, child.manifest.bytes);
        }
    }
    let out = tempfile::tempdir().unwrap();
    let out_ref = format!("oci:{}:v1", out.path().display());
    run_ok(
        skopeo(["copy", "--all", "--src-tls-verify=false"]).arg(cluster.front("team/app:v1")).arg(&out_ref),
    );
    assert_eq!(skopeo_inspect_raw(&out_ref), image.index.bytes);
    // The layers that came back out hash to their digests (skopeo verified them too).
    for child in &image.children {
        for b in child.blobs() {
            let path = out.path().join("blobs/sha256").join(wharf_testkit::digest_hex(&b.digest));
            assert_eq!(digest_of(&std::fs::read(path).unwrap()), b.digest);
        }
    }
}

#[test]
fn a_tag_moved_through_one_replica_is_never_stale_on_the_other() {
    let cluster = Cluster::start(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (on_a, on_b) = cluster.first_two_clients();
    let images: Vec<TestImage> =
        (0..2).map(|i| TestImage::builder().seed(90 + i).tag("v1").build()).collect();
    for img in &images {
        rt.block_on(on_a.push_child("team/moving", &img.children[0])).unwrap();
    }
    let manifests: Vec<_> = images.iter().map(|i| &i.children[0].manifest).collect();
    for trial in 0..60 {
        let m = manifests[trial % 2];
        // Alternate which replica writes; the other one must answer with the new digest at once.
        let (writer, reader) = if trial % 4 < 2 { (&on_a, &on_b) } else { (&on_b, &on_a) };
        rt.block_on(writer.push_manifest("team/moving", "latest", m)).unwrap();
        let (_, got) = rt.block_on(reader.get_manifest("team/moving", "latest")).unwrap();
        assert_eq!(digest_of(&got), m.digest, "trial {trial}: the other replica served a stale tag");
        let head =
            rt.block_on(reader.request(Method::HEAD, "/v2/team/moving/manifests/latest").send()).unwrap();
        assert_eq!(
            head.headers()["docker-content-digest"].to_str().unwrap(),
            m.digest,
            "trial {trial} (HEAD)"
        );
    }
}

#[test]
fn a_manifest_or_tag_deleted_through_one_replica_is_gone_from_the_other_at_once() {
    let cluster = Cluster::start(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (on_a, on_b) = cluster.first_two_clients();
    let image = TestImage::builder().seed(95).tag("v1").build();
    let child = &image.children[0];
    rt.block_on(on_a.push_child("team/going", child)).unwrap();
    let status = |client: &RegistryClient, method: Method, reference: &str| {
        let path = format!("/v2/team/going/manifests/{reference}");
        rt.block_on(client.request(method, &path).send()).unwrap().status()
    };
    for trial in 0..10 {
        // Alternate which replica deletes; the other one has just served (and remembers) both
        // the tag and the digest, and must answer 404 to the next request all the same.
        // The manifest is pushed again each time (its blobs are still linked).
        let (writer, reader) = if trial % 2 == 0 { (&on_a, &on_b) } else { (&on_b, &on_a) };
        let tag = format!("t{trial}");
        rt.block_on(writer.push_manifest("team/going", &tag, &child.manifest)).unwrap();
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(status(reader, method.clone(), &tag), StatusCode::OK, "trial {trial}");
            assert_eq!(status(reader, method, &child.manifest.digest), StatusCode::OK, "trial {trial}");
        }
        assert_eq!(status(writer, Method::DELETE, &tag), StatusCode::ACCEPTED, "trial {trial}");
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(status(reader, method, &tag), StatusCode::NOT_FOUND, "trial {trial}: stale tag");
        }
        assert_eq!(status(reader, Method::GET, &child.manifest.digest), StatusCode::OK, "only the tag went");

        assert_eq!(
            status(writer, Method::DELETE, &child.manifest.digest),
            StatusCode::ACCEPTED,
            "trial {trial}"
        );
        for method in [Method::GET, Method::HEAD] {
            let got = status(reader, method, &child.manifest.digest);
            assert_eq!(got, StatusCode::NOT_FOUND, "trial {trial}: a deleted manifest was served");
        }
    }
}

#[test]
fn a_signature_pushed_or_deleted_through_one_replica_decides_pulls_on_the_other_at_once() {
    let keys = tempfile::tempdir().unwrap();
    let vendor = CosignKey::from_seed(11);
    let key_path = keys.path().join("vendor.pub");
    std::fs::write(&key_path, vendor.public_key_pem()).unwrap();
    let trust = format!("[[trust]]\npattern = \"prod/**\"\nkeys = [{:?}]\n", key_path.to_str().unwrap());
    let cluster = Cluster::start_with(2, &trust);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (on_a, on_b) = cluster.first_two_clients();
    let image = TestImage::builder().seed(97).tag("v1").build();
    rt.block_on(on_a.push_image("prod/app", &image)).unwrap();
    let signature = cosign_style_signature(
        &vendor,
        &format!("{}/prod/app", cluster.replicas[0].addr),
        &image.index.digest,
    );
    let pull = |client: &RegistryClient| {
        let req = client
            .request(Method::GET, "/v2/prod/app/manifests/v1")
            .header("Accept", wharf_testkit::ACCEPT_ALL_MANIFESTS.join(", "));
        rt.block_on(req.send()).unwrap().status()
    };
    for trial in 0..6 {
        let (writer, reader) = if trial % 2 == 0 { (&on_a, &on_b) } else { (&on_b, &on_a) };
        // The reader has just refused the unsigned index (and remembers why) ...
        assert_eq!(pull(reader), StatusCode::FORBIDDEN, "trial {trial}: unsigned");
        rt.block_on(writer.push_artifact("prod/app", &signature)).unwrap();
        // ... and serves it as soon as the signature's push has its answer; then remembers that.
        assert_eq!(pull(reader), StatusCode::OK, "trial {trial}: signed through the other replica");
        let sig = format!("/v2/prod/app/manifests/{}", signature.manifest.digest);
        let deleted = rt.block_on(writer.request(Method::DELETE, &sig).send()).unwrap().status();
        assert_eq!(deleted, StatusCode::ACCEPTED, "trial {trial}");
        assert_eq!(pull(reader), StatusCode::FORBIDDEN, "trial {trial}: the signature was deleted");
    }
}

#[test]
fn a_chunked_upload_hops_replicas_and_finishes_on_another() {
    let cluster = Cluster::start(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let data = blob(9 << 20, 3);
    let digest = digest_of(&data);
    let addrs: Vec<&str> = cluster.replicas.iter().map(|r| r.addr.as_str()).collect();
    let start =
        rt.block_on(http.post(format!("http://{}/v2/hop/app/blobs/uploads/", addrs[0])).send()).unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let mut location = start.headers()["location"].to_str().unwrap().to_owned();
    // Chunks of 1 KB, 2 MB and the rest (over S3's 5 MiB part minimum), each on the other replica.
    let cuts = [0usize, 1000, 2_000_000, data.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let addr = addrs[(i + 1) % 2];
        let resp = rt
            .block_on(
                http.patch(format!("http://{addr}{location}"))
                    .header("content-type", "application/octet-stream")
                    .header("content-range", format!("{}-{}", w[0], w[1] - 1))
                    .body(data[w[0]..w[1]].to_vec())
                    .send(),
            )
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "chunk {i}");
        assert_eq!(resp.headers()["range"].to_str().unwrap(), format!("0-{}", w[1] - 1));
        location = resp.headers()["location"].to_str().unwrap().to_owned();
    }
    // Status from one replica, commit on the other.
    let status = rt.block_on(http.get(format!("http://{}{location}", addrs[1])).send()).unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"].to_str().unwrap(), format!("0-{}", data.len() - 1));
    let sep = if location.contains('?') { '&' } else { '?' };
    let done =
        rt.block_on(http.put(format!("http://{}{location}{sep}digest={digest}", addrs[0])).send()).unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    for addr in &addrs {
        let got = rt.block_on(http.get(format!("http://{addr}/v2/hop/app/blobs/{digest}")).send()).unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(digest_of(&rt.block_on(got.bytes()).unwrap()), digest);
    }
}

#[test]
fn a_replica_killed_mid_push_leaves_nothing_partial_and_the_retry_completes_on_the_other() {
    let mut cluster = Cluster::start(2);
    let data = blob(64 << 20, 9);
    let digest = digest_of(&data);
    let victim = cluster.replicas[0].addr.clone();
    let survivor = cluster.replicas[1].addr.clone();

    // Send half of a monolithic upload by hand, then kill the replica receiving it.
    let mut conn = std::net::TcpStream::connect(&victim).unwrap();
    write!(
        conn,
        "POST /v2/crash/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: {victim}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .unwrap();
    conn.write_all(&data[..data.len() / 2]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.replicas[0].kill();
    drop(conn);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let head =
        rt.block_on(http.head(format!("http://{survivor}/v2/crash/app/blobs/{digest}")).send()).unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND, "nothing of the killed push is visible");

    // The client retries through the balancer: the dead replica refuses connections, nginx
    // passes the request on, and the push completes.
    let client = RegistryClient::new(&cluster.nginx.addr);
    let b = Blob::new("application/octet-stream", data.clone());
    rt.block_on(client.push_blob("crash/app", &b)).unwrap();
    let got = rt.block_on(http.get(format!("http://{survivor}/v2/crash/app/blobs/{digest}")).send()).unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(digest_of(&rt.block_on(got.bytes()).unwrap()), digest);
}

#[test]
fn gc_and_fsck_run_on_s3_beside_serving_replicas() {
    let cluster = Cluster::start(2);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = RegistryClient::new(&cluster.nginx.addr);
    let kept = TestImage::builder().seed(95).tag("v1").build();
    rt.block_on(client.push_image("team/kept", &kept)).unwrap();
    let gone = TestImage::builder().seed(96).tag("v1").build();
    let child = &gone.children[0];
    rt.block_on(client.push_child("team/gone", child)).unwrap();
    let del = rt
        .block_on(
            client
                .request(Method::DELETE, &format!("/v2/team/gone/manifests/{}", child.manifest.digest))
                .send(),
        )
        .unwrap();
    assert_eq!(del.status(), StatusCode::ACCEPTED);

    let dir = tempfile::tempdir().unwrap();
    let config = cluster.config_file(dir.path());
    let wharf = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("WHARF_LOG", "warn")
            .output()
            .expect("run wharf")
    };
    let out = wharf(&["gc", "--grace", "0s", "--json"]);
    assert!(out.status.success(), "gc: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deleted: Vec<String> = report["deleted_blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["digest"].as_str().unwrap().to_owned())
        .collect();
    for b in child.blobs() {
        assert!(deleted.contains(&b.digest), "{} collected from the bucket: {report}", b.digest);
    }
    // What is kept still reads back through every replica; fsck re-hashes the bucket: clean.
    for r in &cluster.replicas {
        let on = RegistryClient::new(&r.addr);
        for c in &kept.children {
            for b in c.blobs() {
                assert_eq!(digest_of(&rt.block_on(on.get_blob("team/kept", &b.digest)).unwrap()), b.digest);
            }
        }
    }
    let out = wharf(&["fsck"]);
    assert!(
        out.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_object_store_going_away_is_a_503_and_its_return_needs_no_restart() {
    let mut cluster = Cluster::start(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = cluster.replicas[0].addr.clone();
    let client = RegistryClient::new(&addr);
    let img = TestImage::builder().seed(97).tag("v1").build();
    rt.block_on(client.push_child("team/app", &img.children[0])).unwrap();
    let layer = img.children[0].blobs().last().unwrap().digest.clone();

    cluster.garage.stop();
    let http = reqwest::Client::new();
    let resp = rt.block_on(http.get(format!("http://{addr}/v2/team/app/blobs/{layer}")).send()).unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.headers().contains_key("retry-after"));
    let body = rt.block_on(resp.text()).unwrap();
    assert!(body.contains("UNAVAILABLE") && body.contains(&cluster.garage.endpoint), "{body}");
    let data = b"pushed while the store is away".to_vec();
    let d = digest_of(&data);
    let resp = rt
        .block_on(
            http.post(format!("http://{addr}/v2/team/app/blobs/uploads/?digest={d}"))
                .body(data.clone())
                .send(),
        )
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    cluster.garage.resume();
    assert_eq!(digest_of(&rt.block_on(client.get_blob("team/app", &layer)).unwrap()), layer);
    let head = rt.block_on(http.head(format!("http://{addr}/v2/team/app/blobs/{d}")).send()).unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND, "the refused push left nothing");
    let resp = rt
        .block_on(http.post(format!("http://{addr}/v2/team/app/blobs/uploads/?digest={d}")).body(data).send())
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[test]
fn a_wrong_key_or_missing_bucket_stops_the_start_naming_endpoint_and_bucket() {
    let garage = Garage::start();
    let dir = tempfile::tempdir().unwrap();
    for (name, storage) in [
        ("wrong key", garage.storage_toml("").replace(&garage.secret_access_key, &"0".repeat(64))),
        ("missing bucket", garage.storage_toml("").replace("bucket = \"wharf\"", "bucket = \"nowhere\"")),
    ] {
        let config = dir.path().join("wharf.toml");
        std::fs::write(&config, storage).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["serve", "--addr", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: serve must not start");
        assert!(stderr.contains(&garage.endpoint), "{name}: {stderr}");
        let bucket = if name == "missing bucket" { "nowhere" } else { "wharf" };
        assert!(stderr.contains(&format!("bucket {bucket}")), "{name}: {stderr}");
        assert!(!stderr.contains(&garage.secret_access_key), "{name}: the secret is never printed");
    }
}

#[test]
fn redirect_mode_sends_blob_gets_to_a_presigned_url_that_skopeo_follows() {
    let garage = Garage::start();
    let config =
        format!("[index_policy]\ndefault = \"sparse\"\n{}redirect = true\n", garage.storage_toml("redirect"));
    let server = WharfServer::start(Backend::Sqlite, &config);
    let image = TestImage::builder().seed(98).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(RegistryClient::new(&server.addr).push_image("team/app", &image)).unwrap();

    let layer = image.children[0].blobs().last().unwrap().clone();
    let no_follow = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let url = format!("http://{}/v2/team/app/blobs/{}", server.addr, layer.digest);
    let resp = rt.block_on(no_follow.get(&url).send()).unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&garage.endpoint) && location.contains("X-Amz-Signature"), "{location}");
    // HEAD is answered by the registry itself; an unlinked digest is never redirected.
    let head = rt.block_on(no_follow.head(&url).send()).unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    let other = rt.block_on(no_follow.get(url.replace("team/app", "team/other")).send()).unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);

    let out = tempfile::tempdir().unwrap();
    let out_ref = format!("oci:{}:v1", out.path().display());
    run_ok(
        skopeo(["copy", "--all", "--src-tls-verify=false"])
            .arg(server.docker_ref("team/app:v1"))
            .arg(&out_ref),
    );
    assert_eq!(skopeo_inspect_raw(&out_ref), image.index.bytes);
    let copied =
        std::fs::read(out.path().join("blobs/sha256").join(wharf_testkit::digest_hex(&layer.digest)))
            .unwrap();
    assert_eq!(digest_of(&copied), layer.digest);
}

/// Garbage collection runs on one replica at a time: while another holds the gc lock (here a
/// psql session on the shared database), `wharf gc` refuses; once it is free, gc runs.
#[test]
fn gc_waits_for_the_replica_that_holds_the_gc_lock() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let cluster = Cluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let config = cluster.config_file(dir.path());
    let gc = || {
        Command::new(env!("CARGO_BIN_EXE_wharf"))
            .args(["gc", "--grace", "0s", "--config"])
            .arg(&config)
            .env("WHARF_LOG", "warn")
            .output()
            .expect("run wharf gc")
    };
    let mut holder = Command::new("psql")
        .args(["-At", &cluster.db.url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql must be installed (postgresql-client)");
    let mut stdin = holder.stdin.take().unwrap();
    writeln!(stdin, "SELECT pg_advisory_lock({});\nSELECT 'locked';", crate::mirrors::lock_key("job:gc"))
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l == "locked")), "psql did not take the lock");

    let out = gc();
    assert!(!out.status.success(), "gc ran beside another collector");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(stdin);
    holder.wait().unwrap();
    let out = gc();
    assert!(out.status.success(), "gc after the lock was freed: {}", String::from_utf8_lossy(&out.stderr));
}
