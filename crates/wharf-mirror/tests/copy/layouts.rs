//! `oci:` and `oci-archive:` on either side, read back by skopeo.

use wharf_mirror::ImageRef;
use wharf_testkit::{Distribution, TestImage, digest_hex, skopeo_inspect_raw};

use crate::harness::*;

fn oci(kind: &str, path: &std::path::Path, tag: &str) -> ImageRef {
    format!("{kind}:{}:{tag}", path.display()).parse().unwrap()
}

#[tokio::test]
async fn registry_to_layout_and_back() {
    let dist = Distribution::start();
    let src = signed_source(&dist, "team/app", 5, 4096).await;
    let img = &src.img;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");

    let report =
        copy(&dist_image(&dist, "team/app:v1"), &oci("oci", &layout, "v1"), &options(&["linux/arm64"]))
            .await
            .unwrap();
    assert_eq!(report.images[0].destination_digest.to_string(), img.index.digest);
    // skopeo reads the same index bytes (so the same digest) back from the layout.
    let raw = skopeo_inspect_raw(&format!("oci:{}:v1", layout.display()));
    assert_eq!(wharf_testkit::sha256_digest(&raw), img.index.digest);
    // Only the selected child is there; absent children simply have no blob.
    let blob = |d: &str| layout.join("blobs/sha256").join(digest_hex(d));
    assert!(blob(&img.platform("linux/arm64").manifest.digest).exists());
    assert!(!blob(&img.platform("linux/amd64").manifest.digest).exists());
    // Signatures are tags in index.json; the SBOM an untagged entry found by its subject.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let names: Vec<&str> =
        entries.iter().filter_map(|e| e["annotations"][wharf_mirror::REF_NAME].as_str()).collect();
    assert!(names.contains(&tag_form(&img.index.digest, ".sig").as_str()), "{names:?}");
    assert!(entries.iter().any(|e| e["digest"] == src.sbom.manifest.digest.as_str()));
    let no_temp = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.'));
    assert!(no_temp, "temporary files left in the layout");

    // From the sparse layout into Wharf: the present child and its referrers.
    let wharf = Wharf::sparse().await;
    let report =
        copy(&oci("oci", &layout, "v1"), &wharf.image("mirror/app:v1"), &options(&[])).await.unwrap();
    let entry = &report.images[0];
    assert_eq!(entry.destination_digest.to_string(), img.index.digest);
    assert_eq!(entry.platforms_copied, ["linux/arm64"]);
    assert_eq!(entry.platforms_absent_at_source.len(), 3);
    assert_eq!(wharf.present_platforms("mirror/app", "v1").await, ["linux/arm64"]);
    let referrers = wharf.json(&format!("/v2/mirror/app/referrers/{}", img.index.digest)).await;
    assert_eq!(referrers["manifests"][0]["digest"], src.sbom.manifest.digest.as_str(), "{referrers}");

    // By digest into a layout named without a tag: an untagged index.json entry.
    let by_digest: ImageRef = dist.docker_ref(&format!("team/app@{}", img.index.digest)).parse().unwrap();
    let plain = dir.path().join("plain");
    let plain_ref: ImageRef = format!("oci:{}", plain.display()).parse().unwrap();
    copy(&by_digest, &plain_ref, &options(&["linux/amd64"])).await.unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(plain.join("index.json")).unwrap()).unwrap();
    let top =
        index["manifests"].as_array().unwrap().iter().find(|e| e["digest"] == img.index.digest.as_str());
    assert!(top.is_some_and(|e| e["annotations"].is_null()), "{index}");

    // A second copy into the layout is a no-op.
    let again =
        copy(&dist_image(&dist, "team/app:v1"), &oci("oci", &layout, "v1"), &options(&["linux/arm64"]))
            .await
            .unwrap();
    assert_eq!(again.bytes_copied, 0);
}

#[tokio::test]
async fn archive_into_wharf_and_wharf_into_archive() {
    let img = TestImage::builder().seed(6).tag("v1").build();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("in.tar");
    img.write_oci_archive(&archive);
    let wharf = Wharf::sparse().await;

    let report = copy(&oci("oci-archive", &archive, "v1"), &wharf.image("mirror/app:v1"), &options(&[]))
        .await
        .unwrap();
    assert_eq!(report.images[0].destination_digest.to_string(), img.index.digest);
    assert_eq!(wharf.present_platforms("mirror/app", "v1").await.len(), 4);

    // Wharf -> archive (one platform), then another tag into the same archive: both readable.
    let out = dir.path().join("out.tar");
    copy(&wharf.image("mirror/app:v1"), &oci("oci-archive", &out, "v1"), &options(&["linux/s390x"]))
        .await
        .unwrap();
    let other = TestImage::builder().seed(7).tag("v2").build();
    let other_archive = dir.path().join("other.tar");
    other.write_oci_archive(&other_archive);
    copy(&oci("oci-archive", &other_archive, "v2"), &oci("oci-archive", &out, "v2"), &options(&[]))
        .await
        .unwrap();
    let raw = skopeo_inspect_raw(&format!("oci-archive:{}:v1", out.display()));
    assert_eq!(wharf_testkit::sha256_digest(&raw), img.index.digest);
    let raw = skopeo_inspect_raw(&format!("oci-archive:{}:v2", out.display()));
    assert_eq!(wharf_testkit::sha256_digest(&raw), other.index.digest);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn docker_media_types_are_kept() {
    let img = TestImage::builder().seed(8).tag("v1").docker_media_types().build();
    let dist = Distribution::start();
    dist.client().push_image("team/app", &img).await.unwrap();
    let wharf = Wharf::sparse().await;
    let report =
        copy(&dist_image(&dist, "team/app:v1"), &wharf.image("mirror/app:v1"), &options(&["linux/amd64"]))
            .await
            .unwrap();
    assert_eq!(report.images[0].media_type, wharf_testkit::media_type::DOCKER_LIST);
    let (_, bytes) = wharf.get("/v2/mirror/app/manifests/v1").await;
    assert_eq!(bytes, img.index.bytes);
}
