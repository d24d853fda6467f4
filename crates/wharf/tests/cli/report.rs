//! `wharf report`: the storage report of a Wharf registry after a partial and a full copy of
//! one image, and a clear error against a registry without the report.

use std::process::Command;

use serde_json::Value;
use wharf_testkit::{Distribution, TestImage, run_fails, run_ok};

use crate::server::{Backend, WharfServer};

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn report_shows_sparse_indexes_and_shared_blobs() {
    let server = WharfServer::start(
        Backend::Sqlite,
        "[[index_policy.repositories]]\npattern = \"mirror/**\"\npolicy = \"sparse\"\n",
    );
    let image = TestImage::builder().seed(41).tag("v1").build();
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path());
    let source = image.oci_ref(layout.path());
    // 2 of 4 platforms into mirror/app, all of them into full/app: the same blobs.
    run_ok(wharf().args([
        "copy",
        &source,
        &server.docker_ref("mirror/app:v1"),
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
    ]));
    run_ok(wharf().args(["copy", &source, &server.docker_ref("full/app:v1"), "--all-platforms"]));
    let registry = format!("docker://{}", server.addr);

    let out = run_ok(wharf().args(["report", &registry, "--json"]));
    let r: Value = serde_json::from_slice(&out).unwrap();
    let repos = r["repositories"].as_array().unwrap();
    let names: Vec<&str> = repos.iter().map(|x| x["repository"].as_str().unwrap()).collect();
    assert_eq!(names, ["full/app", "mirror/app"]);
    let (full, mirror) = (&repos[0], &repos[1]);
    assert_eq!((u(&mirror["manifests"]), u(&mirror["indexes"]), u(&mirror["sparse_indexes"])), (3, 1, 1));
    assert_eq!((u(&full["manifests"]), u(&full["indexes"]), u(&full["sparse_indexes"])), (5, 1, 0));
    assert!(u(&mirror["present_bytes"]) < u(&mirror["full_bytes"]), "{mirror}");
    assert_eq!(mirror["full_bytes_exact"], false);
    assert_eq!(full["present_bytes"], full["full_bytes"]);
    // Every blob of mirror/app is one of full/app's: the blob store holds full/app's once.
    let t = &r["totals"];
    assert_eq!(u(&t["unique_blobs"]), u(&full["linked_blobs"]));
    assert_eq!(u(&t["unique_blob_bytes"]), u(&full["linked_blob_bytes"]));
    assert_eq!(u(&t["linked_blob_bytes"]), u(&full["linked_blob_bytes"]) + u(&mirror["linked_blob_bytes"]));

    // The table: one line per repository, the estimate marked, and the totals.
    let out = String::from_utf8(run_ok(wharf().args(["report", &registry]))).unwrap();
    for column in ["REPOSITORY", "MANIFESTS", "INDEXES", "SPARSE", "STORED", "FULL INDEXES WOULD NEED"] {
        assert!(out.contains(column), "{out}");
    }
    let line = |name: &str| out.lines().find(|l| l.trim_start().starts_with(name)).unwrap().to_owned();
    assert!(line("mirror/app").contains('~'), "{out}");
    assert!(!line("full/app").contains('~'), "{out}");
    assert!(line("TOTAL").contains('~'), "{out}");
    assert!(out.contains("2 repositories, 8 manifests, 2 tags, 2 indexes (1 sparse)"), "{out}");
    assert!(out.contains("counted once"), "{out}");

    // A registry without the extension: said plainly.
    let distribution = Distribution::start();
    let err = run_fails(wharf().args(["report", &format!("docker://{}", distribution.addr)]));
    assert!(err.contains("does not offer Wharf's storage report"), "{err}");
    // An image is not a registry.
    let err = run_fails(wharf().args(["report", &server.docker_ref("mirror/app:v1")]));
    assert!(err.contains("takes a registry"), "{err}");
}
