//! Index policies (complete, sparse, require), presence, and the `_wharf` report.

use reqwest::StatusCode;
use serde_json::Value;
use wharf_registry::{IndexPolicy, IndexRule, RegistryConfig, RepoPattern};

use crate::harness::*;

crate::backend_tests!(
    sparse_repository_accepts_partial_index,
    require_list_is_enforced_per_platform,
    late_fill_and_delete_change_presence,
    child_pushed_before_index_counts,
);

fn config() -> RegistryConfig {
    RegistryConfig {
        index_policy: IndexPolicy {
            default: IndexRule::Complete,
            repositories: vec![
                (RepoPattern::new("mirror/**"), IndexRule::Sparse),
                (
                    RepoPattern::new("prod/**"),
                    IndexRule::Require(vec!["linux/amd64".parse().unwrap(), "linux/arm64".parse().unwrap()]),
                ),
            ],
        },
        ..RegistryConfig::default()
    }
}

struct Four {
    amd: TestImage,
    arm: TestImage,
    armv7: TestImage,
    s390: TestImage,
}

async fn four(s: &Server, repo: &str) -> Four {
    Four {
        amd: image(s, repo, "amd", ("linux", "amd64")).await,
        arm: image(s, repo, "arm", ("linux", "arm64")).await,
        armv7: image(s, repo, "armv7", ("linux", "arm")).await,
        s390: image(s, repo, "s390", ("linux", "s390x")).await,
    }
}

fn four_index(f: &Four) -> (Vec<u8>, wharf_oci::Digest) {
    index(&[
        (&f.amd, "linux/amd64"),
        (&f.arm, "linux/arm64/v8"),
        (&f.armv7, "linux/arm/v7"),
        (&f.s390, "linux/s390x"),
    ])
}

async fn push(s: &Server, repo: &str, img: &TestImage) {
    let resp = s.put_manifest(repo, &img.digest.to_string(), img.media_type, &img.manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

async fn sparse_repository_accepts_partial_index(b: Backend) {
    let s = Server::start_with(b, config()).await;
    assert_eq!(s.get("/v2/").await.headers()["x-sparse-manifest-support"], "true");
    let f = four(&s, "mirror/app").await;
    push(&s, "mirror/app", &f.amd).await;
    push(&s, "mirror/app", &f.arm).await;
    let (idx, idx_digest) = four_index(&f);
    let resp = s.put_manifest("mirror/app", "v1", OCI_INDEX, &idx).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
    // Served byte for byte, same digest.
    let got = s.get("/v2/mirror/app/manifests/v1").await;
    assert_eq!(got.headers()["docker-content-digest"], idx_digest.to_string().as_str());
    assert_eq!(got.bytes().await.unwrap().as_ref(), &idx[..]);
    // A present child is served; an absent one says which platform of which index.
    assert_eq!(s.get(&format!("/v2/mirror/app/manifests/{}", f.arm.digest)).await.status(), StatusCode::OK);
    let body = expect_error(
        s.get(&format!("/v2/mirror/app/manifests/{}", f.s390.digest)).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    let msg = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("platform linux/s390x of index")
            && msg.contains(&idx_digest.to_string())
            && msg.contains("sparse index"),
        "{msg}"
    );
    // The same index in a repository with the default (complete) policy is refused.
    let g = four(&s, "other/app").await;
    push(&s, "other/app", &g.amd).await;
    push(&s, "other/app", &g.arm).await;
    let resp = s.put_manifest("other/app", "v1", OCI_INDEX, &idx).await;
    let body = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(body["errors"].as_array().unwrap().len(), 2);

    // The presence report.
    let report: Value = s.get("/v2/mirror/app/_wharf/index/v1").await.json().await.unwrap();
    assert_eq!(report["digest"], idx_digest.to_string());
    assert_eq!(report["policy"], "sparse");
    assert_eq!(report["present_children"], 2);
    assert_eq!(report["absent_children"], 2);
    let children = report["children"].as_array().unwrap();
    let platforms: Vec<(&str, bool)> =
        children.iter().map(|c| (c["platform"].as_str().unwrap(), c["present"].as_bool().unwrap())).collect();
    assert_eq!(
        platforms,
        vec![("linux/amd64", true), ("linux/arm64", true), ("linux/arm/v7", false), ("linux/s390x", false)]
    );
    let present_bytes: u64 = children.iter().filter_map(|c| c["stored_bytes"].as_u64()).sum();
    assert!(present_bytes > 0);
    assert_eq!(report["present_bytes"].as_u64().unwrap(), present_bytes + idx.len() as u64);
    assert!(report["full_bytes"].as_u64().unwrap() > report["present_bytes"].as_u64().unwrap());
    assert_eq!(report["full_bytes_exact"], false);
    // By digest too.
    let by_digest = s.get(&format!("/v2/mirror/app/_wharf/index/{idx_digest}")).await;
    assert_eq!(by_digest.status(), StatusCode::OK);
}

async fn require_list_is_enforced_per_platform(b: Backend) {
    let s = Server::start_with(b, config()).await;
    let f = four(&s, "prod/app").await;
    let (idx, _) = four_index(&f);
    // amd64 + arm64 present: the require list is satisfied, the others may be absent.
    push(&s, "prod/app", &f.amd).await;
    let resp = s.put_manifest("prod/app", "v1", OCI_INDEX, &idx).await;
    let body = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "only the required arm64 is missing: {body}");
    assert_eq!(errors[0]["detail"]["platform"], "linux/arm64");
    assert!(errors[0]["message"].as_str().unwrap().contains("require [linux/amd64, linux/arm64]"));
    push(&s, "prod/app", &f.arm).await;
    let resp = s.put_manifest("prod/app", "v1", OCI_INDEX, &idx).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Variants count: linux/arm/v7 present does not satisfy a policy needing arm64.
    let g = four(&s, "prod/other").await;
    push(&s, "prod/other", &g.amd).await;
    push(&s, "prod/other", &g.armv7).await;
    let resp = s.put_manifest("prod/other", "v1", OCI_INDEX, &four_index(&g).0).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

async fn late_fill_and_delete_change_presence(b: Backend) {
    let s = Server::start_with(b, config()).await;
    let f = four(&s, "mirror/app").await;
    push(&s, "mirror/app", &f.amd).await;
    let (idx, _) = four_index(&f);
    assert_eq!(s.put_manifest("mirror/app", "v1", OCI_INDEX, &idx).await.status(), StatusCode::CREATED);
    let present = |r: &Value| -> Vec<bool> {
        r["children"].as_array().unwrap().iter().map(|c| c["present"].as_bool().unwrap()).collect()
    };
    let report: Value = s.get("/v2/mirror/app/_wharf/index/v1").await.json().await.unwrap();
    assert_eq!(present(&report), vec![true, false, false, false]);
    // Late fill: push the s390x child after the index.
    push(&s, "mirror/app", &f.s390).await;
    let report: Value = s.get("/v2/mirror/app/_wharf/index/v1").await.json().await.unwrap();
    assert_eq!(present(&report), vec![true, false, false, true]);
    assert_eq!(s.get(&format!("/v2/mirror/app/manifests/{}", f.s390.digest)).await.status(), StatusCode::OK);
    // Delete a child: absent again, and the index is still served.
    let resp = s
        .req(reqwest::Method::DELETE, &format!("/v2/mirror/app/manifests/{}", f.amd.digest))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let report: Value = s.get("/v2/mirror/app/_wharf/index/v1").await.json().await.unwrap();
    assert_eq!(present(&report), vec![false, false, false, true]);
    assert_eq!(s.get("/v2/mirror/app/manifests/v1").await.bytes().await.unwrap().as_ref(), &idx[..]);
    // Fill everything: the report becomes exact.
    for img in [&f.amd, &f.arm, &f.armv7] {
        push(&s, "mirror/app", img).await;
    }
    let report: Value = s.get("/v2/mirror/app/_wharf/index/v1").await.json().await.unwrap();
    assert_eq!(report["full_bytes_exact"], true);
    assert_eq!(report["full_bytes"], report["present_bytes"]);
}

async fn child_pushed_before_index_counts(b: Backend) {
    let s = Server::start_with(b, config()).await;
    let f = four(&s, "mirror/app").await;
    for img in [&f.amd, &f.arm, &f.armv7, &f.s390] {
        push(&s, "mirror/app", img).await;
    }
    let (idx, _) = four_index(&f);
    assert_eq!(s.put_manifest("mirror/app", "v1", OCI_INDEX, &idx).await.status(), StatusCode::CREATED);
    let report: Value = s.get("/v2/mirror/app/_wharf/index/v1").await.json().await.unwrap();
    assert_eq!(report["absent_children"], 0);
    // The report of something that is not an index has no children.
    let report: Value =
        s.get(&format!("/v2/mirror/app/_wharf/index/{}", f.amd.digest)).await.json().await.unwrap();
    assert_eq!(report["children"], serde_json::json!([]));
    expect_error(s.get("/v2/mirror/app/_wharf/index/nope").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
        .await;
}
