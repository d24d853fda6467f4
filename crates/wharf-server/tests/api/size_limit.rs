//! `max_blob_bytes`: a pushed blob that grows past it is refused (`413 SIZE_INVALID`) and
//! nothing of it is kept, on every store: the filesystem, and Garage through two replicas
//! (where each chunk may reach the other replica, which reads the offset from the bucket).

use reqwest::{Method, StatusCode};
use wharf_oci::Digest;
use wharf_registry::RegistryConfig;

use crate::harness::*;

crate::backend_tests!(blobs_over_the_size_limit_are_refused_and_nothing_is_kept);

const MAX: usize = 256 * 1024;

async fn blobs_over_the_size_limit_are_refused_and_nothing_is_kept(backend: Backend) {
    let s = Server::start_with(
        backend,
        RegistryConfig { max_blob_bytes: Some(MAX as u64), ..Default::default() },
    )
    .await;
    let says_the_limit = |body: serde_json::Value| {
        let message = body["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(&format!("at most {MAX} bytes")), "{body}");
    };

    // One byte over, in one POST: refused, nothing stored.
    let big = vec![5u8; MAX + 1];
    let big_digest = Digest::sha256_of(&big);
    let resp = s
        .req(Method::POST, &format!("/v2/app/blobs/uploads/?digest={big_digest}"))
        .header("content-type", "application/octet-stream")
        .body(big)
        .send()
        .await
        .unwrap();
    says_the_limit(expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await);
    let head = s.req(Method::HEAD, &format!("/v2/app/blobs/{big_digest}")).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);

    // In chunks: the one that crosses the limit is refused and undone; the session goes on.
    let resp = s.req(Method::POST, "/v2/app/blobs/uploads/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let patch = |from: usize, bytes: Vec<u8>| {
        s.req(Method::PATCH, &location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", from + bytes.len() - 1))
            .body(bytes)
    };
    let first = vec![1u8; MAX - 10];
    assert_eq!(patch(0, first.clone()).send().await.unwrap().status(), StatusCode::ACCEPTED);
    let resp = patch(MAX - 10, vec![2u8; 11]).send().await.unwrap();
    says_the_limit(expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await);
    let status = s.req(Method::GET, &location).send().await.unwrap();
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], format!("0-{}", MAX - 11).as_str());

    // A blob of exactly the limit completes through the same session.
    let mut blob = first;
    blob.extend_from_slice(&[3u8; 10]);
    let digest = Digest::sha256_of(&blob);
    let sep = if location.contains('?') { '&' } else { '?' };
    let done = s
        .req(Method::PUT, &format!("{location}{sep}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(vec![3u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED, "{}", done.text().await.unwrap());
    assert_eq!(s.get(&format!("/v2/app/blobs/{digest}")).await.bytes().await.unwrap(), blob);
}
