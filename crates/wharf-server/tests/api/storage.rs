//! The registry-wide storage report, `GET /v2/_wharf/storage`: per repository counts, sparse
//! indexes, what indexes store and would need, blobs shared between repositories counted
//! once; with auth, only what the caller may pull.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wharf_registry::{IndexPolicy, IndexRule, RegistryConfig, RepoPattern};

use crate::auth::{ANON, AuthServer, CI, Creds, DEV, expect_401, token_auth};
use crate::harness::*;

crate::backend_tests!(
    storage_report_counts_sparse_and_shared_content,
    storage_report_lists_only_what_the_caller_may_pull,
);

const STORAGE_REPORT: &str = "application/vnd.wharf.storage-report.v1+json";

fn mirror_is_sparse() -> RegistryConfig {
    RegistryConfig {
        index_policy: IndexPolicy {
            default: IndexRule::Complete,
            repositories: vec![(RepoPattern::new("mirror/**"), IndexRule::Sparse)],
        },
        ..RegistryConfig::default()
    }
}

async fn report(s: &Server) -> Value {
    let resp = s.get("/v2/_wharf/storage").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], STORAGE_REPORT);
    resp.json().await.unwrap()
}

async fn push(s: &Server, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let resp = s.put_manifest(repo, reference, media_type, bytes).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{}", resp.text().await.unwrap());
}

fn names(report: &Value) -> Vec<&str> {
    report["repositories"].as_array().unwrap().iter().map(|r| r["repository"].as_str().unwrap()).collect()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

async fn storage_report_counts_sparse_and_shared_content(b: Backend) {
    let s = Server::start_with(b, mirror_is_sparse()).await;
    let empty = report(&s).await;
    assert_eq!(empty["repositories"], json!([]));
    assert_eq!(empty["filtered"], false);
    assert_eq!(empty["totals"]["unique_blob_bytes"], 0);
    assert_eq!(empty["totals"]["unlinked_blobs"], 0);
    assert_eq!(empty["totals"]["full_bytes_exact"], true);

    // mirror/app: a sparse index, 2 of its 4 platforms here (the others' blobs nowhere).
    let amd = image(&s, "mirror/app", "amd", ("linux", "amd64")).await;
    let arm = image(&s, "mirror/app", "arm", ("linux", "arm64")).await;
    let (_, _, armv7) = image_parts("armv7", ("linux", "arm"));
    let (_, _, s390) = image_parts("s390", ("linux", "s390x"));
    for img in [&amd, &arm] {
        push(&s, "mirror/app", &img.digest.to_string(), img.media_type, &img.manifest).await;
    }
    let (sparse_index, _) = index(&[
        (&amd, "linux/amd64"),
        (&arm, "linux/arm64"),
        (&armv7, "linux/arm/v7"),
        (&s390, "linux/s390x"),
    ]);
    push(&s, "mirror/app", "v1", OCI_INDEX, &sparse_index).await;

    // complete/app: a complete index; its amd64 image is the same as mirror/app's, so the
    // two repositories share that config and layer.
    let amd_again = image(&s, "complete/app", "amd", ("linux", "amd64")).await;
    let ppc = image(&s, "complete/app", "ppc", ("linux", "ppc64le")).await;
    push(&s, "complete/app", &amd_again.digest.to_string(), amd_again.media_type, &amd_again.manifest).await;
    push(&s, "complete/app", "ppc", ppc.media_type, &ppc.manifest).await;
    let (full_index, _) = index(&[(&amd_again, "linux/amd64"), (&ppc, "linux/ppc64le")]);
    push(&s, "complete/app", "v1", OCI_INDEX, &full_index).await;

    let r = report(&s).await;
    assert_eq!(names(&r), ["complete/app", "mirror/app"]);
    assert_eq!(r["filtered"], false);
    let complete = &r["repositories"][0];
    let mirror = &r["repositories"][1];
    let counts =
        |v: &Value| ["manifests", "tags", "indexes", "sparse_indexes", "linked_blobs"].map(|k| u(&v[k]));
    assert_eq!(counts(mirror), [3, 1, 1, 1, 4]);
    assert_eq!(counts(complete), [3, 2, 1, 0, 4]);

    // What the indexes store and would need: the sums of their index reports.
    assert!(u(&mirror["present_bytes"]) < u(&mirror["full_bytes"]), "{mirror}");
    assert_eq!(mirror["full_bytes_exact"], false);
    assert_eq!(complete["present_bytes"], complete["full_bytes"]);
    assert_eq!(complete["full_bytes_exact"], true);
    for (repo, figures) in [("mirror/app", mirror), ("complete/app", complete)] {
        let index_report: Value = s.get(&format!("/v2/{repo}/_wharf/index/v1")).await.json().await.unwrap();
        for k in ["present_bytes", "full_bytes", "full_bytes_exact"] {
            assert_eq!(figures[k], index_report[k], "{repo} {k}");
        }
    }

    // Totals: sums over repositories, except the unique blobs, where the shared config
    // and layer count once.
    let (config, layer, _) = image_parts("amd", ("linux", "amd64"));
    let shared_bytes = (config.len() + layer.len()) as u64;
    let t = &r["totals"];
    assert_eq!(u(&t["repositories"]), 2);
    for k in [
        "manifests",
        "tags",
        "indexes",
        "sparse_indexes",
        "linked_blobs",
        "linked_blob_bytes",
        "present_bytes",
    ] {
        assert_eq!(u(&t[k]), u(&mirror[k]) + u(&complete[k]), "{k}");
    }
    assert_eq!(u(&t["full_bytes"]), u(&mirror["full_bytes"]) + u(&complete["full_bytes"]));
    assert_eq!(t["full_bytes_exact"], false);
    assert_eq!(u(&t["unique_blobs"]), 8 - 2);
    assert_eq!(u(&t["unique_blob_bytes"]), u(&t["linked_blob_bytes"]) - shared_bytes);
    assert_eq!((u(&t["unlinked_blobs"]), u(&t["unlinked_blob_bytes"])), (0, 0));

    // A blob unlinked from its only repository stays on disk until garbage collection: it
    // leaves the repository's figures and shows as unlinked.
    let loose = s.push_blob("mirror/app", b"a loose blob").await;
    assert_eq!(u(&report(&s).await["repositories"][1]["linked_blobs"]), 5);
    let resp = s.req(Method::DELETE, &format!("/v2/mirror/app/blobs/{loose}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let r = report(&s).await;
    assert_eq!(u(&r["repositories"][1]["linked_blobs"]), 4);
    assert_eq!(u(&r["totals"]["unique_blobs"]), 6);
    assert_eq!((u(&r["totals"]["unlinked_blobs"]), u(&r["totals"]["unlinked_blob_bytes"])), (1, 12));

    // Filling an absent platform makes it count, and the index is complete then.
    let (c, l, _) = image_parts("armv7", ("linux", "arm"));
    let (c2, l2, _) = image_parts("s390", ("linux", "s390x"));
    for blob in [&c, &l, &c2, &l2] {
        s.push_blob("mirror/app", blob).await;
    }
    for img in [&armv7, &s390] {
        push(&s, "mirror/app", &img.digest.to_string(), img.media_type, &img.manifest).await;
    }
    let mirror = report(&s).await["repositories"][1].clone();
    assert_eq!(counts(&mirror), [5, 1, 1, 0, 8]);
    assert_eq!(mirror["present_bytes"], mirror["full_bytes"]);
    assert_eq!(mirror["full_bytes_exact"], true);

    // Other extensions and methods.
    expect_error(s.get("/v2/_wharf/nothing").await, StatusCode::NOT_FOUND, "UNSUPPORTED").await;
    let resp = s.req(Method::DELETE, "/v2/_wharf/storage").send().await.unwrap();
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}

async fn storage_report(s: &AuthServer, creds: &Creds) -> Value {
    let resp = s.send(Method::GET, "/v2/_wharf/storage", creds).await;
    assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

fn auth_names(report: &Value) -> Vec<String> {
    names(report).into_iter().map(str::to_owned).collect()
}

async fn storage_report_lists_only_what_the_caller_may_pull(backend: Backend) {
    // Token mode: basic credentials are accepted directly too.
    let s = AuthServer::start(backend, token_auth).await;
    let host = s.base.trim_start_matches("http://");
    let realm = format!("Bearer realm=\"http://{host}/token\",service=\"wharf\"");
    s.push_image("public/a", "v1", &CI).await;
    s.push_image("private/b", "v1", &CI).await;
    s.push_image("team/c", "v1", &DEV).await;
    // One blob in public/a and team/c.
    s.push_blob("public/a", b"shared", &CI).await;
    s.push_blob("team/c", b"shared", &DEV).await;

    // Anonymous callers need what the catalog needs: a login.
    expect_401(
        s.send(Method::GET, "/v2/_wharf/storage", &ANON).await,
        &format!("{realm},scope=\"registry:catalog:*\""),
    )
    .await;
    let anon = Creds::Bearer(s.token(&ANON, &["registry:catalog:*"]).await);
    expect_401(
        s.send(Method::GET, "/v2/_wharf/storage", &anon).await,
        &format!("{realm},scope=\"registry:catalog:*\""),
    )
    .await;
    // A token without the catalog scope is asked to get it.
    let without = Creds::Bearer(s.token(&CI, &["repository:public/a:pull"]).await);
    expect_401(
        s.send(Method::GET, "/v2/_wharf/storage", &without).await,
        &format!("{realm},scope=\"registry:catalog:*\",error=\"insufficient_scope\""),
    )
    .await;

    // ci may not pull team/c: it is left out, with its share of the totals.
    for ci in [CI, Creds::Bearer(s.token(&CI, &["registry:catalog:*"]).await)] {
        let r = storage_report(&s, &ci).await;
        assert_eq!(auth_names(&r), ["private/b", "public/a"]);
        assert_eq!(r["filtered"], true);
        let t = &r["totals"];
        assert_eq!((u(&t["repositories"]), u(&t["manifests"]), u(&t["linked_blobs"])), (2, 2, 5));
        assert_eq!(u(&t["unique_blobs"]), 5);
        assert_eq!(u(&t["unique_blob_bytes"]), u(&t["linked_blob_bytes"]));
        // Blobs of no repository are not a filtered caller's business.
        assert!(t.get("unlinked_blobs").is_none() && t.get("unlinked_blob_bytes").is_none(), "{t}");
    }

    // dev may pull all three: the whole registry, the shared blob once.
    let r = storage_report(&s, &DEV).await;
    assert_eq!(auth_names(&r), ["private/b", "public/a", "team/c"]);
    assert_eq!(r["filtered"], false);
    let t = &r["totals"];
    assert_eq!((u(&t["linked_blobs"]), u(&t["unique_blobs"])), (8, 7));
    assert_eq!(u(&t["unique_blob_bytes"]), u(&t["linked_blob_bytes"]) - "shared".len() as u64);
    assert_eq!(u(&t["unlinked_blobs"]), 0);
}
