//! `wharf copy` as users run it: the binary, a bearer-token upstream (CNCF distribution 2.8
//! behind the Docker token flow), `--json`, and a destination that refuses sparse indexes.

use std::process::Command;

use wharf_testkit::{Distribution, TestImage, run_fails, run_ok, skopeo_inspect_raw};

use crate::server::{Backend, WharfServer};
use crate::sparse::inspect_json;

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

#[test]
fn copies_two_platforms_from_a_token_protected_upstream() {
    let upstream = Distribution::start_with_token_auth(Some(("mirror", "s3cret-pass")));
    let image = TestImage::builder().seed(11).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    let issued_before = upstream.token_issuer.as_ref().unwrap().requests().len();

    let server = WharfServer::start(Backend::Sqlite, "[index_policy]\ndefault = \"sparse\"\n");
    let out = run_ok(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &server.docker_ref("mirror/app:v1"),
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "--src-creds",
        "mirror:s3cret-pass",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    // The token flow was used, and the secret is nowhere in the output.
    assert!(upstream.token_issuer.as_ref().unwrap().requests().len() > issued_before);
    assert!(!String::from_utf8_lossy(&out).contains("s3cret-pass"));

    let index_digest = &image.index.digest;
    assert_eq!(report["images"][0]["source_digest"], index_digest.as_str());
    assert_eq!(report["images"][0]["destination_digest"], index_digest.as_str());
    let left_out: u64 = ["linux/arm/v7", "linux/s390x"].iter().map(|p| image.platform(p).total_size()).sum();
    assert_eq!(report["bytes_filtered"].as_u64().unwrap(), left_out);
    let copied: u64 = ["linux/amd64", "linux/arm64"].iter().map(|p| image.platform(p).total_size()).sum();
    assert!(report["bytes_copied"].as_u64().unwrap() >= copied, "{report}");
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("mirror/app:v1")), image.index.bytes);
    let presence = inspect_json(&server, "mirror/app:v1");
    let present: Vec<bool> =
        presence["children"].as_array().unwrap().iter().map(|c| c["present"].as_bool().unwrap()).collect();
    assert_eq!(present, vec![true, true, false, false]);

    // Run again: nothing to send.
    let out = run_ok(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &server.docker_ref("mirror/app:v1"),
        "--platform=linux/amd64",
        "--platform=linux/arm64",
        "--src-creds=mirror:s3cret-pass",
        "--json",
    ]));
    let again: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(again["bytes_copied"], 0, "{again}");

    // Wrong password: a clear failure that does not echo the secret.
    let err = run_fails(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &server.docker_ref("mirror/other:v1"),
        "--src-creds",
        "mirror:wrong-pass",
    ]));
    assert!(!err.contains("wrong-pass"), "{err}");
    assert!(err.contains("refused the credentials of user \"mirror\""), "{err}");
}

#[test]
fn refuses_plainly_when_the_destination_cannot_hold_a_sparse_index() {
    let upstream = Distribution::start();
    let image = TestImage::builder().seed(12).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    // A Wharf whose policy is complete announces it: the copy stops before uploading.
    let strict = WharfServer::start(Backend::Sqlite, "");
    let err = run_fails(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &strict.docker_ref("app:v1"),
        "--platform",
        "linux/amd64",
    ]));
    assert!(err.contains(&strict.addr) && err.contains("sparse"), "{err}");
    let catalog = run_ok(Command::new("curl").args(["-s", &format!("http://{}/v2/_catalog", strict.addr)]));
    assert_eq!(String::from_utf8_lossy(&catalog).trim(), r#"{"repositories":[]}"#, "nothing was uploaded");

    // distribution 2.8 does not announce anything and refuses the index; --rewrite-index
    // writes a new one, and says that its digest differs.
    let dest = Distribution::start();
    let err = run_fails(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &dest.docker_ref("app:v1"),
        "--platform",
        "linux/amd64",
    ]));
    assert!(err.contains(&dest.addr) && err.contains("--rewrite-index"), "{err}");
    let out = run_ok(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &dest.docker_ref("app:v1"),
        "--platform",
        "linux/amd64",
        "--rewrite-index",
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["images"][0]["rewritten"], true);
    assert_ne!(report["images"][0]["destination_digest"], report["images"][0]["source_digest"]);
    let rewritten: serde_json::Value =
        serde_json::from_slice(&skopeo_inspect_raw(&dest.docker_ref("app:v1"))).unwrap();
    assert_eq!(rewritten["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn a_killed_copy_completes_when_run_again() {
    let upstream = Distribution::start();
    // Big enough that the copy is still running when the first blob has landed.
    let image = TestImage::builder().seed(13).tag("v1").layers(2).layer_size(16 << 20).build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    let server = WharfServer::start(Backend::Sqlite, "");
    let blobs: Vec<String> = image.blobs().iter().map(|b| b.digest.clone()).collect();

    let mut child = wharf()
        .args(["copy", &upstream.docker_ref("vendor/app:v1"), &server.docker_ref("app:v1"), "--jobs", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let http = http_status;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let landed = blobs.iter().any(|d| http(&format!("http://{}/v2/app/blobs/{d}", server.addr)) == 200);
        if landed || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert_eq!(
        http_status(&format!("http://{}/v2/app/manifests/v1", server.addr)),
        404,
        "the copy was killed before it published the index"
    );

    let out = run_ok(wharf().args([
        "copy",
        &upstream.docker_ref("vendor/app:v1"),
        &server.docker_ref("app:v1"),
        "--json",
    ]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        report["bytes_existing"].as_u64().unwrap() >= 16 << 20,
        "what landed before the kill is reused: {report}"
    );
    assert_eq!(skopeo_inspect_raw(&server.docker_ref("app:v1")), image.index.bytes);
    for b in &blobs {
        assert_eq!(http_status(&format!("http://{}/v2/app/blobs/{b}", server.addr)), 200);
    }
}

#[test]
fn inspect_works_against_a_registry_without_the_extension() {
    let upstream = Distribution::start();
    let image = TestImage::builder().seed(14).tag("v1").build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(upstream.client().push_image("vendor/app", &image)).unwrap();
    let out = run_ok(wharf().args(["inspect", "--json", &upstream.docker_ref("vendor/app:v1")]));
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["digest"], image.index.digest.as_str());
    assert_eq!(report["absent_children"], 0);
    let platforms: Vec<&str> =
        report["children"].as_array().unwrap().iter().map(|c| c["platform"].as_str().unwrap()).collect();
    assert_eq!(platforms, vec!["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/s390x"]);
    let amd = image.platform("linux/amd64");
    assert_eq!(report["children"][0]["stored_bytes"].as_u64().unwrap(), amd.total_size());
    // The human table names every platform.
    let table =
        String::from_utf8(run_ok(wharf().args(["inspect", &upstream.docker_ref("vendor/app:v1")]))).unwrap();
    assert!(table.contains("linux/s390x") && table.contains("4 of 4 children present"), "{table}");
    // An image that is not there is a clear error.
    let err = run_fails(wharf().args(["inspect", &upstream.docker_ref("vendor/app:nope")]));
    assert!(err.contains("nope"), "{err}");
}

/// Status of a plain GET (the body is dropped).
fn http_status(url: &str) -> u16 {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}
