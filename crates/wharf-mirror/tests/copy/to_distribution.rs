//! Destinations that refuse sparse indexes: distribution 2.8 (says so only when the index is
//! pushed) and Wharf with the complete policy (says so up front).

use wharf_mirror::MirrorError;
use wharf_registry::IndexRule;
use wharf_testkit::Distribution;

use crate::harness::*;

#[tokio::test]
async fn distribution_refuses_then_rewrite_index() {
    let dist = Distribution::start();
    let src = signed_source(&dist, "team/app", 3, 1024).await;
    let dest = Distribution::start();
    let from = dist_image(&dist, "team/app:v1");
    let to = dist_image(&dest, "mirror/app:v1");
    let two = options(&["linux/amd64", "linux/arm64"]);

    let err = copy(&from, &to, &two).await.unwrap_err();
    assert!(matches!(err, MirrorError::SparseRefused(_)), "{err:?}");
    let msg = err.to_string();
    for want in
        [dest.addr.as_str(), "MANIFEST_BLOB_UNKNOWN", "HTTP 400", "sparse", "--rewrite-index", "linux/s390x"]
    {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }

    let rewrite = wharf_mirror::CopyOptions { rewrite_index: true, ..two };
    let report = copy(&from, &to, &rewrite).await.unwrap();
    let entry = &report.images[0];
    assert!(entry.rewritten);
    assert_eq!(entry.source_digest.to_string(), src.img.index.digest);
    assert_ne!(entry.destination_digest, entry.source_digest);
    assert!(
        report.warnings.iter().any(|w| w.contains("rewritten") && w.contains("not verify")),
        "{report:#?}"
    );

    let (media_type, bytes) = dest.client().get_manifest("mirror/app", "v1").await.unwrap();
    assert_eq!(media_type, wharf_testkit::media_type::OCI_INDEX, "media type kept");
    assert_eq!(wharf_testkit::sha256_digest(&bytes), entry.destination_digest.to_string());
    let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let listed: Vec<&str> =
        index["manifests"].as_array().unwrap().iter().map(|d| d["digest"].as_str().unwrap()).collect();
    let want: Vec<&str> =
        ["linux/amd64", "linux/arm64"].iter().map(|p| src.img.platform(p).manifest.digest.as_str()).collect();
    assert_eq!(listed, want);

    // Child signatures arrived as cosign tags (distribution has no referrers API).
    let d = &src.img.platform("linux/amd64").manifest.digest;
    assert!(dest.client().get_manifest("mirror/app", &tag_form(d, ".sig")).await.is_ok());
}

#[tokio::test]
async fn complete_wharf_stops_before_uploading() {
    let dist = Distribution::start();
    let src = signed_source(&dist, "team/app", 4, 1024).await;
    let wharf = Wharf::start(IndexRule::Complete).await;
    let err =
        copy(&dist_image(&dist, "team/app:v1"), &wharf.image("mirror/app:v1"), &options(&["linux/amd64"]))
            .await
            .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("X-Sparse-Manifest-Support: false") && msg.contains("Nothing was uploaded"),
        "{msg}"
    );
    assert!(msg.contains(&wharf.addr), "{msg}");
    let d = &src.img.platform("linux/amd64").manifest.digest;
    assert!(!wharf.has_manifest("mirror/app", d).await, "nothing may be uploaded");

    // All platforms: a complete index, accepted.
    let report =
        copy(&dist_image(&dist, "team/app:v1"), &wharf.image("mirror/app:v1"), &options(&[])).await.unwrap();
    assert_eq!(report.images[0].destination_digest.to_string(), src.img.index.digest);
    assert_eq!(report.bytes_filtered, 0);
}
