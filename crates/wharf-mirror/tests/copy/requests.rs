//! What a copy asks the destination. An image it holds costs no blob request; once a mount has
//! worked there, a blob is not asked about before it is sent (a mount from its own repository
//! asks and opens the upload in one request). Counted by Wharf's `/metrics`; against
//! distribution 2.8, shown by what had to be sent.

use wharf_mirror::Copier;
use wharf_testkit::{Distribution, TestImage};

use crate::harness::*;

/// Requests Wharf answered on one endpoint (`blobs`: GET and HEAD; `uploads`: POST, PATCH, PUT).
async fn requests(wharf: &Wharf, endpoint: &str) -> u64 {
    let (_, body) = wharf.get("/metrics").await;
    let prefix = format!("wharf_http_requests_total{{endpoint=\"{endpoint}\",");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A distribution source holding two unrelated images, `team/a:v1` and `team/b:v1`.
async fn source_of_two(seed: u64) -> (Distribution, TestImage, TestImage) {
    let dist = Distribution::start();
    let a = TestImage::builder().seed(seed).tag("v1").build();
    let b = TestImage::builder().seed(seed + 1).tag("v1").build();
    dist.client().push_image("team/a", &a).await.unwrap();
    dist.client().push_image("team/b", &b).await.unwrap();
    (dist, a, b)
}

fn manifests_size(img: &TestImage) -> u64 {
    img.index.size() + img.children.iter().map(|c| c.manifest.size()).sum::<u64>()
}

#[tokio::test]
async fn an_unchanged_image_copied_again_costs_no_blob_request() {
    let dist = Distribution::start();
    signed_source(&dist, "team/app", 21, 4096).await;
    let wharf = Wharf::sparse().await;
    let (from, to) = (dist_image(&dist, "team/app:v1"), wharf.image("mirror/app:v1"));
    let first = copy(&from, &to, &options(&[])).await.unwrap();
    assert!(first.bytes_copied > 0, "{first:#?}");
    let (blobs, uploads) = (requests(&wharf, "blobs").await, requests(&wharf, "uploads").await);
    assert!(uploads > 0, "the first copy uploaded through the uploads endpoint");

    let again = copy(&from, &to, &options(&[])).await.unwrap();
    assert_eq!(again.bytes_copied, 0, "{again:#?}");
    assert_eq!(again.bytes_existing, first.bytes_copied + first.bytes_existing, "{first:#?}\n{again:#?}");
    assert_eq!(requests(&wharf, "blobs").await, blobs, "no blob of a manifest it holds was asked about");
    assert_eq!(requests(&wharf, "uploads").await, uploads);
}

#[tokio::test]
async fn after_a_mount_worked_blobs_are_sent_without_asking_first() {
    let (dist, a, b) = source_of_two(22).await;
    let wharf = Wharf::sparse().await;
    let copier = Copier::quiet(options(&[]));
    copier.copy(&dist_image(&dist, "team/a:v1"), &wharf.image("one/a:v1")).await.unwrap();
    let mounted = copier.copy(&dist_image(&dist, "team/a:v1"), &wharf.image("two/a:v1")).await.unwrap();
    assert_eq!(mounted.bytes_copied, manifests_size(&a), "every blob mounted: {mounted:#?}");

    let blobs = requests(&wharf, "blobs").await;
    let report = copier.copy(&dist_image(&dist, "team/b:v1"), &wharf.image("three/b:v1")).await.unwrap();
    let total = manifests_size(&b) + b.children.iter().flat_map(|c| c.blobs()).map(|b| b.size()).sum::<u64>();
    assert_eq!(report.bytes_copied, total, "{report:#?}");
    assert_eq!(requests(&wharf, "blobs").await, blobs, "no HEAD before an upload");
    assert_eq!(wharf.tag_digest("three/b", "v1").await.as_deref(), Some(b.index.digest.as_str()));
}

#[tokio::test]
async fn the_one_request_check_finds_blobs_distribution_holds() {
    let (dist, _, b) = source_of_two(24).await;
    let dest = Distribution::start();
    let copier = Copier::quiet(options(&[]));
    copier.copy(&dist_image(&dist, "team/a:v1"), &dist_image(&dest, "one/a:v1")).await.unwrap();
    copier.copy(&dist_image(&dist, "team/a:v1"), &dist_image(&dest, "two/a:v1")).await.unwrap();
    // b's blobs are in the destination repository already, its manifests are not.
    for blob in b.children.iter().flat_map(|c| c.blobs()) {
        dest.client().ensure_blob("three/b", blob).await.unwrap();
    }

    let report =
        copier.copy(&dist_image(&dist, "team/b:v1"), &dist_image(&dest, "three/b:v1")).await.unwrap();
    assert_eq!(report.bytes_copied, manifests_size(&b), "only the manifests were sent: {report:#?}");
    let (_, bytes) = dest.client().get_manifest("three/b", "v1").await.unwrap();
    assert_eq!(bytes, b.index.bytes);
}
