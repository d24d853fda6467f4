//! Two platforms of a signed index from distribution 2.8 into Wharf (sparse policy), then
//! again (nothing moves), then a third platform (only it moves).

use serde_json::Value;
use wharf_testkit::Distribution;
use wharf_testkit::sign::verify_cosign_signature;

use crate::harness::*;

#[tokio::test]
async fn two_platforms_then_a_third() {
    let dist = Distribution::start();
    let src = signed_source(&dist, "team/app", 1, 32 * 1024).await;
    let img = &src.img;
    let wharf = Wharf::sparse().await;
    let from = dist_image(&dist, "team/app:v1");
    let to = wharf.image("mirror/app:v1");

    let report = copy(&from, &to, &options(&["linux/amd64", "linux/arm64"])).await.unwrap();
    let entry = &report.images[0];
    assert_eq!(entry.source_digest.to_string(), img.index.digest);
    assert_eq!(entry.destination_digest.to_string(), img.index.digest, "the index digest must not change");
    assert!(!entry.rewritten);
    assert_eq!(entry.platforms_copied, ["linux/amd64", "linux/arm64"]);
    assert_eq!(entry.platforms_filtered, ["linux/arm/v7", "linux/s390x"]);
    assert!(entry.platforms_absent_at_source.is_empty());
    // The index, its two children's signatures, and the SBOM.
    assert_eq!(entry.referrers_copied, 4, "{report:#?}");

    // The index bytes are unchanged and exactly two children are present.
    let (_, bytes) = wharf.get("/v2/mirror/app/manifests/v1").await;
    assert_eq!(bytes, img.index.bytes);
    assert_eq!(wharf.present_platforms("mirror/app", "v1").await, ["linux/amd64", "linux/arm64"]);

    // Signatures of the index and the copied children arrived; the others' did not.
    assert!(wharf.has_manifest("mirror/app", &tag_form(&img.index.digest, ".sig")).await);
    for p in ["linux/amd64", "linux/arm64"] {
        let d = &img.platform(p).manifest.digest;
        assert!(wharf.has_manifest("mirror/app", &tag_form(d, ".sig")).await, "{p}");
    }
    for p in ["linux/arm/v7", "linux/s390x"] {
        let d = &img.platform(p).manifest.digest;
        assert!(!wharf.has_manifest("mirror/app", &tag_form(d, ".sig")).await, "{p}");
        assert!(!wharf.has_manifest("mirror/app", d).await, "{p}");
    }

    // The ECDSA signature over the index still verifies against the mirrored index.
    let sig_manifest =
        wharf.get(&format!("/v2/mirror/app/manifests/{}", tag_form(&img.index.digest, ".sig"))).await.1;
    let payload_digest = &src.index_sig.payload().digest;
    let payload = wharf.get(&format!("/v2/mirror/app/blobs/{payload_digest}")).await.1;
    verify_cosign_signature(&src.key.verifying_key(), &sig_manifest, &payload, &img.index.digest).unwrap();

    // The SBOM is listed by Wharf's referrers API.
    let referrers = wharf.json(&format!("/v2/mirror/app/referrers/{}", img.index.digest)).await;
    let listed: Vec<&Value> = referrers["manifests"].as_array().unwrap().iter().collect();
    assert!(listed.iter().any(|d| d["digest"] == src.sbom.manifest.digest.as_str()), "{referrers}");

    // bytes_filtered: the two left-out platform images.
    let left_out = img.platform("linux/arm/v7").total_size() + img.platform("linux/s390x").total_size();
    assert_eq!(report.bytes_filtered, left_out);
    assert!(report.bytes_copied > 0);

    // Again: nothing moves.
    let again = copy(&from, &to, &options(&["linux/amd64", "linux/arm64"])).await.unwrap();
    assert_eq!(again.bytes_copied, 0, "{again:#?}");
    assert_eq!(again.bytes_existing, report.bytes_copied + report.bytes_existing, "{again:#?}");

    // A third platform: only it (and its signature) moves.
    let third = copy(&from, &to, &options(&["linux/amd64", "linux/arm64", "linux/arm/v7"])).await.unwrap();
    assert_eq!(third.bytes_copied, src.platform_bytes("linux/arm/v7"), "{third:#?}");
    assert_eq!(third.images[0].destination_digest.to_string(), img.index.digest);
    assert_eq!(third.bytes_filtered, img.platform("linux/s390x").total_size());
    assert_eq!(
        wharf.present_platforms("mirror/app", "v1").await,
        ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    );
    let d = &img.platform("linux/arm/v7").manifest.digest;
    assert!(wharf.has_manifest("mirror/app", &tag_form(d, ".sig")).await);
}

#[tokio::test]
async fn named_platform_absent_from_a_sparse_source_fails() {
    // A sparse Wharf holding two platforms is the source.
    let dist = Distribution::start();
    let src = signed_source(&dist, "team/app", 2, 1024).await;
    let wharf = Wharf::sparse().await;
    let partial = wharf.image("mirror/app:v1");
    copy(&dist_image(&dist, "team/app:v1"), &partial, &options(&["linux/amd64", "linux/arm64"]))
        .await
        .unwrap();
    let other = Wharf::sparse().await;

    let err = copy(&partial, &other.image("copy/app:v1"), &options(&["linux/s390x"])).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("linux/s390x") && msg.contains("sparse"), "{msg}");
    let err = copy(&partial, &other.image("copy/app:v1"), &options(&["linux/ppc64le"])).await.unwrap_err();
    assert!(err.to_string().contains("has no platform linux/ppc64le"), "{err}");

    // Without a filter the present children are copied and the absent ones reported.
    let report = copy(&partial, &other.image("copy/app:v1"), &options(&[])).await.unwrap();
    let entry = &report.images[0];
    assert_eq!(entry.destination_digest.to_string(), src.img.index.digest);
    assert_eq!(entry.platforms_copied, ["linux/amd64", "linux/arm64"]);
    assert_eq!(entry.platforms_absent_at_source, ["linux/arm/v7", "linux/s390x"]);
    assert_eq!(other.present_platforms("copy/app", "v1").await, ["linux/amd64", "linux/arm64"]);
}

/// Within one registry (a promotion from one repository to another) blobs are mounted from
/// the source repository, never sent again.
#[tokio::test]
async fn promotion_within_one_registry_mounts_every_blob() {
    let dist = Distribution::start();
    let src = signed_source(&dist, "team/app", 5, 64 * 1024).await;
    let wharf = Wharf::sparse().await;
    let staging = wharf.image("staging/app:v1");
    copy(&dist_image(&dist, "team/app:v1"), &staging, &options(&["linux/amd64"])).await.unwrap();

    let report = copy(&staging, &wharf.image("prod/app:v1"), &options(&["linux/amd64"])).await.unwrap();
    let amd = src.img.platform("linux/amd64");
    let blobs = amd.total_size() - amd.manifest.size();
    assert!(report.bytes_existing >= blobs, "config and layers are mounted: {report:#?}");
    assert!(report.bytes_copied < blobs, "only manifests travel: {report:#?}");
    assert_eq!(report.images[0].destination_digest.to_string(), src.img.index.digest);
    assert_eq!(wharf.present_platforms("prod/app", "v1").await, ["linux/amd64"]);
}
