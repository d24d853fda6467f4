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
