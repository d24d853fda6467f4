//! The OCI distribution spec v1.1: pull, push, content discovery, content management.

use reqwest::{Method, StatusCode};
use serde_json::Value;
use wharf_oci::{Algorithm, Digest};

use crate::harness::*;

crate::backend_tests!(
    base_endpoint,
    monolithic_push_and_pull_with_ranges,
    post_then_single_put,
    chunked_upload_in_order_and_out_of_order,
    broken_uploads_lose_nothing,
    cross_repository_mount,
    blobs_are_isolated_per_repository,
    manifests_by_tag_and_digest,
    manifest_errors,
    complete_policy_refuses_index_with_missing_children,
    docker_schema2_and_manifest_list,
    sha512_blob_and_manifest,
    tags_list_sorted_and_paged,
    catalog_paged,
    referrers_api,
    content_management_deletes,
    hostile_names_and_paths,
);

async fn base_endpoint(b: Backend) {
    let s = Server::start(b).await;
    let resp = s.get("/v2/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["docker-distribution-api-version"], "registry/2.0");
    assert_eq!(resp.headers()["x-sparse-manifest-support"], "false");
    let resp = s.get("/v2/nothing/here/at/all").await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Operations: health and Prometheus metrics, outside /v2/.
    let health = s.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(s.metric("wharf_http_requests_total{endpoint=\"base\",status=\"2xx\"}").await, 1);
    assert_eq!(s.metric("wharf_http_requests_total{endpoint=\"other\",status=\"4xx\"}").await, 1);
}

async fn monolithic_push_and_pull_with_ranges(b: Backend) {
    let s = Server::start(b).await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = s.push_blob("app", &data).await;

    let head = s.req(Method::HEAD, &format!("/v2/app/blobs/{d}")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(head.headers()["docker-content-digest"], d.to_string().as_str());

    let get = s.get(&format!("/v2/app/blobs/{d}")).await;
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.unwrap().as_ref(), &data[..]);

    let part = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &data[10..20]);

    let tail = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .header("range", "bytes=99990-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &data[99990..]);

    let beyond = s
        .req(Method::GET, &format!("/v2/app/blobs/{d}"))
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let unknown = Digest::sha256_of(b"never pushed");
    expect_error(s.get(&format!("/v2/app/blobs/{unknown}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        .await;
    let head = s.req(Method::HEAD, &format!("/v2/app/blobs/{unknown}")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
}

async fn post_then_single_put(b: Backend) {
    let s = Server::start(b).await;
    let resp = s.req(Method::POST, "/v2/app/blobs/uploads/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(resp.headers().contains_key("docker-upload-uuid"));
    let data = b"one single put".to_vec();
    let d = Digest::sha256_of(&data);
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = s
        .req(Method::PUT, &format!("{location}{sep}digest={d}"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["location"], format!("/v2/app/blobs/{d}").as_str());
    assert_eq!(resp.headers()["docker-content-digest"], d.to_string().as_str());
    assert_eq!(s.get(&format!("/v2/app/blobs/{d}")).await.bytes().await.unwrap().as_ref(), &data[..]);
    // The finished session is gone.
    expect_error(s.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

async fn chunked_upload_in_order_and_out_of_order(b: Backend) {
    let s = Server::start(b).await;
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = Digest::sha256_of(&data);
    let resp = s.req(Method::POST, "/v2/app/blobs/uploads/").send().await.unwrap();
    let mut location = resp.headers()["location"].to_str().unwrap().to_owned();

    let patch = |loc: String, range: &str, chunk: Vec<u8>| {
        s.req(Method::PATCH, &loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", range)
            .header("content-length", chunk.len().to_string())
            .body(chunk)
            .send()
    };
    let resp = patch(location.clone(), "0-9999", data[..10_000].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["range"], "0-9999");
    location = resp.headers()["location"].to_str().unwrap().to_owned();

    // Out of order: skips bytes 10000..20000.
    let resp = patch(location.clone(), "20000-29999", data[20_000..].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // A repeated chunk is out of order too.
    let resp = patch(location.clone(), "0-9999", data[..10_000].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // Status still says 0-9999: nothing of the refused chunks was kept.
    let status = s.get(&location).await;
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-9999");

    let resp = patch(location.clone(), "10000-19999", data[10_000..20_000].to_vec()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["range"], "0-19999");
    // Last chunk without Content-Range (streamed), then close with an empty PUT.
    let resp = s.req(Method::PATCH, &location).body(data[20_000..].to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["range"], "0-29999");
    let sep = if location.contains('?') { '&' } else { '?' };
    let resp = s.req(Method::PUT, &format!("{location}{sep}digest={d}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/app/blobs/{d}")).await.bytes().await.unwrap().as_ref(), &data[..]);
}

async fn broken_uploads_lose_nothing(b: Backend) {
    let s = Server::start(b).await;
    // Digest mismatch on monolithic push: 400 DIGEST_INVALID, nothing stored.
    let wrong = Digest::sha256_of(b"something else");
    let resp = s
        .req(Method::POST, &format!("/v2/app/blobs/uploads/?digest={wrong}"))
        .body("actual")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(
        s.req(Method::HEAD, &format!("/v2/app/blobs/{wrong}")).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.registry.blob_store().stat(&wrong).await.unwrap(), None);

    // Malformed digests.
    let resp =
        s.req(Method::POST, "/v2/app/blobs/uploads/?digest=sha256:1234").body("x").send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = s
        .req(Method::POST, "/v2/app/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e")
        .body("x")
        .send()
        .await
        .unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;

    // Digest mismatch when closing a session: refused, the session can still be closed right.
    let resp = s.req(Method::POST, "/v2/app/blobs/uploads/").send().await.unwrap();
    let loc = resp.headers()["location"].to_str().unwrap().to_owned();
    s.req(Method::PATCH, &loc).body("hello").send().await.unwrap();
    let resp = s.req(Method::PUT, &format!("{loc}?digest={wrong}")).send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = s.req(Method::PUT, &format!("{loc}?digest=")).send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let right = Digest::sha256_of(b"hello");
    let resp = s.req(Method::PUT, &format!("{loc}?digest={right}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    // Unknown and hostile upload ids.
    for id in ["3f1b6c1e-0000-4000-8000-000000000000", "..%2F..%2Fetc", "not-a-uuid"] {
        let resp = s.get(&format!("/v2/app/blobs/uploads/{id}")).await;
        expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
        let resp =
            s.req(Method::PATCH, &format!("/v2/app/blobs/uploads/{id}")).body("x").send().await.unwrap();
        expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }

    // A session belongs to its repository.
    let resp = s.req(Method::POST, "/v2/app/blobs/uploads/").send().await.unwrap();
    let id = resp.headers()["docker-upload-uuid"].to_str().unwrap().to_owned();
    let resp = s.get(&format!("/v2/other/blobs/uploads/{id}")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;

    // Cancel: 204, then unknown.
    let resp = s.req(Method::DELETE, &format!("/v2/app/blobs/uploads/{id}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    expect_error(
        s.get(&format!("/v2/app/blobs/uploads/{id}")).await,
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await;
}

async fn cross_repository_mount(b: Backend) {
    let s = Server::start(b).await;
    let d = s.push_blob("source/app", b"shared layer").await;
    // Mount with from.
    let resp = s
        .req(Method::POST, &format!("/v2/dest/app/blobs/uploads/?mount={d}&from=source/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["location"], format!("/v2/dest/app/blobs/{d}").as_str());
    assert_eq!(s.get(&format!("/v2/dest/app/blobs/{d}")).await.status(), StatusCode::OK);
    // Mount without from: the registry finds the blob itself.
    let resp = s.req(Method::POST, &format!("/v2/third/blobs/uploads/?mount={d}")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Mount from a repository that does not have it: falls back to an upload session.
    let other = Digest::sha256_of(b"nowhere");
    let resp = s
        .req(Method::POST, &format!("/v2/dest/app/blobs/uploads/?mount={other}&from=source/app"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert!(resp.headers()["location"].to_str().unwrap().starts_with("/v2/dest/app/blobs/uploads/"));
    // ... and a blob that exists elsewhere but not in `from` is not mounted from it.
    let resp = s
        .req(Method::POST, &format!("/v2/fourth/blobs/uploads/?mount={d}&from=unrelated"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

async fn blobs_are_isolated_per_repository(b: Backend) {
    let s = Server::start(b).await;
    let d = s.push_blob("private/app", b"secret layer").await;
    expect_error(s.get(&format!("/v2/public/app/blobs/{d}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
        .await;
    let head = s.req(Method::HEAD, &format!("/v2/public/app/blobs/{d}")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    // A manifest in another repository cannot reference it either.
    let cfg = s.push_blob("public/app", b"{}").await;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":12}}]}}"#
    );
    let resp = s.put_manifest("public/app", "v1", OCI_MANIFEST, manifest.as_bytes()).await;
    let body = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    assert_eq!(body["errors"][0]["detail"]["digest"], d.to_string());
}

async fn manifests_by_tag_and_digest(b: Backend) {
    let s = Server::start(b).await;
    let img = image(&s, "app", "a", ("linux", "amd64")).await;
    let resp = s.put_manifest("app", "v1", img.media_type, &img.manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["docker-content-digest"], img.digest.to_string().as_str());
    assert_eq!(resp.headers()["location"], format!("/v2/app/manifests/{}", img.digest).as_str());
    assert!(!resp.headers().contains_key("oci-subject"));

    for reference in ["v1".to_string(), img.digest.to_string()] {
        let resp = s
            .req(Method::GET, &format!("/v2/app/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], OCI_MANIFEST);
        assert_eq!(resp.headers()["docker-content-digest"], img.digest.to_string().as_str());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), &img.manifest[..], "bytes served exactly as pushed");
        let head = s.req(Method::HEAD, &format!("/v2/app/manifests/{reference}")).send().await.unwrap();
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()["content-length"], img.manifest.len().to_string().as_str());
        assert_eq!(head.headers()["docker-content-digest"], img.digest.to_string().as_str());
    }
    // Pushing by digest.
    let img2 = image(&s, "app", "b", ("linux", "arm64")).await;
    let resp = s.put_manifest("app", &img2.digest.to_string(), img2.media_type, &img2.manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Moving a tag.
    let resp = s.put_manifest("app", "v1", img2.media_type, &img2.manifest).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = s.get("/v2/app/manifests/v1").await;
    assert_eq!(resp.headers()["docker-content-digest"], img2.digest.to_string().as_str());
    // Unknown tag and digest.
    expect_error(s.get("/v2/app/manifests/nope").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let unknown = Digest::sha256_of(b"nothing");
    expect_error(
        s.get(&format!("/v2/app/manifests/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // Unknown repository.
    expect_error(s.get("/v2/no/such/repo/manifests/v1").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

async fn manifest_errors(b: Backend) {
    let s = Server::start(b).await;
    let img = image(&s, "app", "a", ("linux", "amd64")).await;
    // The digest in the URL must match the bytes.
    let wrong = Digest::sha256_of(b"other");
    let resp = s.put_manifest("app", &wrong.to_string(), OCI_MANIFEST, &img.manifest).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // Content-Type that is not a manifest type.
    let resp = s.put_manifest("app", "v1", "text/plain", &img.manifest).await;
    let body = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("text/plain"));
    // Content-Type that contradicts the body's mediaType.
    let resp = s.put_manifest("app", "v1", OCI_INDEX, &img.manifest).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    // Not JSON; wrong schema version; missing config.
    for bad in [
        &b"{not json"[..],
        br#"{"schemaVersion":1}"#,
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#,
    ] {
        let resp = s.put_manifest("app", "v1", OCI_MANIFEST, bad).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    // Missing layer.
    let missing = Digest::sha256_of(b"missing layer");
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{missing}","size":13}}]}}"#,
        img.blobs[0],
        s.registry.blob_size(&"app".parse().unwrap(), &img.blobs[0], false).await.unwrap()
    );
    let resp = s.put_manifest("app", "v1", OCI_MANIFEST, m.as_bytes()).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    // Oversize: over 4 MiB.
    let mut big =
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"pad":""#).into_bytes();
    big.extend(std::iter::repeat_n(b'x', 4 * 1024 * 1024));
    big.extend_from_slice(br#""}}"#);
    let resp = s.put_manifest("app", "big", OCI_MANIFEST, &big).await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "MANIFEST_INVALID").await;
    // Nothing of the refused pushes is visible.
    expect_error(s.get("/v2/app/manifests/v1").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

async fn complete_policy_refuses_index_with_missing_children(b: Backend) {
    let s = Server::start(b).await;
    let amd = image(&s, "app", "amd", ("linux", "amd64")).await;
    let arm = image(&s, "app", "arm", ("linux", "arm64")).await;
    let s390 = image(&s, "app", "s390", ("linux", "s390x")).await;
    s.put_manifest("app", &amd.digest.to_string(), OCI_MANIFEST, &amd.manifest).await;
    let (idx, _) = index(&[(&amd, "linux/amd64"), (&arm, "linux/arm64/v8"), (&s390, "linux/s390x")]);
    let resp = s.put_manifest("app", "v1", OCI_INDEX, &idx).await;
    let body = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "one error per missing child: {body}");
    assert!(errors[0]["message"].as_str().unwrap().contains("linux/arm64"));
    assert_eq!(errors[0]["detail"]["platform"], "linux/arm64");
    assert_eq!(errors[0]["detail"]["digest"], arm.digest.to_string());
    assert!(errors[1]["message"].as_str().unwrap().contains("linux/s390x"));
    // Once the children are there, the same bytes are accepted.
    s.put_manifest("app", &arm.digest.to_string(), OCI_MANIFEST, &arm.manifest).await;
    s.put_manifest("app", &s390.digest.to_string(), OCI_MANIFEST, &s390.manifest).await;
    let resp = s.put_manifest("app", "v1", OCI_INDEX, &idx).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = s.get("/v2/app/manifests/v1").await;
    assert_eq!(got.headers()["content-type"], OCI_INDEX);
    assert_eq!(got.bytes().await.unwrap().as_ref(), &idx[..]);
}

async fn docker_schema2_and_manifest_list(b: Backend) {
    let s = Server::start(b).await;
    const V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    let cfg = s.push_blob("docker", br#"{"architecture":"amd64","os":"linux"}"#).await;
    let layer = s.push_blob("docker", b"docker layer").await;
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{V2}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":37,"digest":"{cfg}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":12,"digest":"{layer}"}}]}}"#
    );
    let md = Digest::sha256_of(m.as_bytes());
    assert_eq!(
        s.put_manifest("docker", &md.to_string(), V2, m.as_bytes()).await.status(),
        StatusCode::CREATED
    );
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{LIST}","manifests":[{{"mediaType":"{V2}","size":{},"digest":"{md}","platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        m.len()
    );
    let resp = s.put_manifest("docker", "latest", LIST, list.as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let got = s.get("/v2/docker/manifests/latest").await;
    assert_eq!(got.headers()["content-type"], LIST, "media types are never converted");
    assert_eq!(got.bytes().await.unwrap().as_ref(), list.as_bytes());
}

async fn sha512_blob_and_manifest(b: Backend) {
    let s = Server::start(b).await;
    let data = b"sha512 content".to_vec();
    let d = Digest::compute(Algorithm::Sha512, &data);
    let resp = s
        .req(Method::POST, &format!("/v2/app/blobs/uploads/?digest={d}"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.get(&format!("/v2/app/blobs/{d}")).await.bytes().await.unwrap().as_ref(), &data[..]);
    let cfg = s.push_blob("app", b"{}").await;
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}]}}"#,
        data.len()
    );
    let md = Digest::compute(Algorithm::Sha512, m.as_bytes());
    let resp = s.put_manifest("app", &md.to_string(), OCI_MANIFEST, m.as_bytes()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["docker-content-digest"], md.to_string().as_str());
    assert_eq!(s.get(&format!("/v2/app/manifests/{md}")).await.bytes().await.unwrap().as_ref(), m.as_bytes());
}

async fn tags_list_sorted_and_paged(b: Backend) {
    let s = Server::start(b).await;
    let img = image(&s, "app", "a", ("linux", "amd64")).await;
    let tags = ["v2", "latest", "A-upper", "v10", "1.0", "_under", "v1"];
    for t in tags {
        assert_eq!(s.put_manifest("app", t, OCI_MANIFEST, &img.manifest).await.status(), StatusCode::CREATED);
    }
    let mut sorted: Vec<&str> = tags.to_vec();
    sorted.sort();
    let all: Value = s.get("/v2/app/tags/list").await.json().await.unwrap();
    assert_eq!(all["name"], "app");
    assert_eq!(all["tags"], serde_json::json!(sorted));

    let resp = s.get("/v2/app/tags/list?n=3").await;
    let link = resp.headers()["link"].to_str().unwrap().to_owned();
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["tags"], serde_json::json!(&sorted[..3]));
    assert!(link.contains(&format!("last={}", sorted[2])) && link.contains("rel=\"next\""), "{link}");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let page2: Value = s.get(next).await.json().await.unwrap();
    assert_eq!(page2["tags"], serde_json::json!(&sorted[3..6]));
    let page3: Value =
        s.get(&format!("/v2/app/tags/list?n=3&last={}", sorted[5])).await.json().await.unwrap();
    assert_eq!(page3["tags"], serde_json::json!(&sorted[6..]));
    let resp = s.get(&format!("/v2/app/tags/list?n=10&last={}", sorted[6])).await;
    assert!(!resp.headers().contains_key("link"));
    let empty: Value = resp.json().await.unwrap();
    assert_eq!(empty["tags"], serde_json::json!([]));
    let zero: Value = s.get("/v2/app/tags/list?n=0").await.json().await.unwrap();
    assert_eq!(zero["tags"], serde_json::json!([]));
    expect_error(s.get("/v2/app/tags/list?n=abc").await, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    expect_error(s.get("/v2/unknown/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

async fn catalog_paged(b: Backend) {
    let s = Server::start(b).await;
    for repo in ["b/one", "a", "c", "b/two"] {
        s.push_blob(repo, repo.as_bytes()).await;
    }
    let all: Value = s.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(all["repositories"], serde_json::json!(["a", "b/one", "b/two", "c"]));
    let resp = s.get("/v2/_catalog?n=2").await;
    assert!(resp.headers()["link"].to_str().unwrap().contains("last=b/one"));
    let page: Value = resp.json().await.unwrap();
    assert_eq!(page["repositories"], serde_json::json!(["a", "b/one"]));
    let page: Value = s.get("/v2/_catalog?n=2&last=b/one").await.json().await.unwrap();
    assert_eq!(page["repositories"], serde_json::json!(["b/two", "c"]));
}

async fn referrers_api(b: Backend) {
    let s = Server::start(b).await;
    let img = image(&s, "app", "a", ("linux", "amd64")).await;
    s.put_manifest("app", "v1", OCI_MANIFEST, &img.manifest).await;
    let empty = s.push_blob("app", b"{}").await;
    let sbom_layer = s.push_blob("app", b"{\"spdx\":true}").await;
    let artifact = |artifact_type: &str, annotation: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"{artifact_type}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/spdx+json","digest":"{sbom_layer}","size":13}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}},"annotations":{{"note":"{annotation}"}}}}"#,
            img.digest,
            img.manifest.len()
        )
    };
    let sbom = artifact("application/spdx+json", "sbom");
    let sig = artifact("application/vnd.example.signature", "sig");
    for a in [&sbom, &sig] {
        let d = Digest::sha256_of(a.as_bytes());
        let resp = s.put_manifest("app", &d.to_string(), OCI_MANIFEST, a.as_bytes()).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["oci-subject"], img.digest.to_string().as_str());
    }
    let resp = s.get(&format!("/v2/app/referrers/{}", img.digest)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], OCI_INDEX);
    assert!(!resp.headers().contains_key("oci-filters-applied"));
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["schemaVersion"], 2);
    assert_eq!(list["manifests"].as_array().unwrap().len(), 2);
    let types: Vec<&str> =
        list["manifests"].as_array().unwrap().iter().map(|m| m["artifactType"].as_str().unwrap()).collect();
    assert!(types.contains(&"application/spdx+json") && types.contains(&"application/vnd.example.signature"));
    assert!(list["manifests"][0]["annotations"]["note"].is_string());

    let resp = s.get(&format!("/v2/app/referrers/{}?artifactType=application/spdx+json", img.digest)).await;
    assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
    let list: Value = resp.json().await.unwrap();
    assert_eq!(list["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(list["manifests"][0]["digest"], Digest::sha256_of(sbom.as_bytes()).to_string());

    // A subject with no referrers (or not even pushed) gives an empty index, not 404.
    let none: Value =
        s.get(&format!("/v2/app/referrers/{}", Digest::sha256_of(b"x"))).await.json().await.unwrap();
    assert_eq!(none["manifests"], serde_json::json!([]));
    expect_error(s.get("/v2/app/referrers/sha256:bad").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID")
        .await;
}

async fn content_management_deletes(b: Backend) {
    let s = Server::start(b).await;
    let img = image(&s, "app", "a", ("linux", "amd64")).await;
    s.put_manifest("app", "v1", OCI_MANIFEST, &img.manifest).await;
    s.put_manifest("app", "v2", OCI_MANIFEST, &img.manifest).await;
    // Delete a tag: the manifest stays.
    assert_eq!(
        s.req(Method::DELETE, "/v2/app/manifests/v1").send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    expect_error(s.get("/v2/app/manifests/v1").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(s.get(&format!("/v2/app/manifests/{}", img.digest)).await.status(), StatusCode::OK);
    // Delete the manifest: its remaining tags go with it.
    let resp = s.req(Method::DELETE, &format!("/v2/app/manifests/{}", img.digest)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    expect_error(
        s.get(&format!("/v2/app/manifests/{}", img.digest)).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    expect_error(s.get("/v2/app/manifests/v2").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let tags: Value = s.get("/v2/app/tags/list").await.json().await.unwrap();
    assert_eq!(tags["tags"], serde_json::json!([]));
    let resp = s.req(Method::DELETE, &format!("/v2/app/manifests/{}", img.digest)).send().await.unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Delete a blob.
    let d = &img.blobs[1];
    assert_eq!(
        s.req(Method::DELETE, &format!("/v2/app/blobs/{d}")).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    expect_error(s.get(&format!("/v2/app/blobs/{d}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let resp = s.req(Method::DELETE, &format!("/v2/app/blobs/{d}")).send().await.unwrap();
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

async fn hostile_names_and_paths(b: Backend) {
    let s = Server::start(b).await;
    let long = "a".repeat(256);
    for name in ["UPPER", "a/../b", "..", "a//b", "-lead", long.as_str(), "a%2Fb"] {
        let resp = s.get(&format!("/v2/{name}/tags/list")).await;
        let status = resp.status();
        // Paths clients normalise away (`..`) may not reach us as written; either way
        // nothing outside a valid name is ever served.
        assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND, "{name}: {status}");
        if status == StatusCode::BAD_REQUEST {
            expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
        }
    }
    let resp = s.req(Method::POST, "/v2/UPPER/blobs/uploads/").send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    let resp = s.req(Method::POST, &format!("/v2/{long}/blobs/uploads/")).send().await.unwrap();
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    assert!(s.get(&format!("/v2/{}/tags/list", "a".repeat(255))).await.status() == StatusCode::NOT_FOUND);
    // Unsupported method on a known endpoint.
    let resp = s.req(Method::PUT, "/v2/_catalog").send().await.unwrap();
    expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
}
