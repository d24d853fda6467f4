//! A copy dropped mid-way, then run again: the rerun completes it and moves only the rest.

use std::sync::Arc;

use tokio::sync::Notify;
use wharf_mirror::{BlobOutcome, Copier, Progress};
use wharf_oci::Digest;
use wharf_testkit::{Distribution, TestImage};

use crate::harness::*;

/// Signals when the first blob has been copied.
struct FirstBlob(Arc<Notify>);

impl Progress for FirstBlob {
    fn blob_done(&self, _digest: &Digest, outcome: BlobOutcome) {
        if matches!(outcome, BlobOutcome::Copied(_)) {
            self.0.notify_one();
        }
    }
}

#[tokio::test]
async fn interrupted_copy_resumes() {
    let img = TestImage::builder().seed(9).tag("v1").layers(2).layer_size(1 << 20).build();
    let dist = Distribution::start();
    dist.client().push_image("team/app", &img).await.unwrap();
    let wharf = Wharf::sparse().await;
    let from = dist_image(&dist, "team/app:v1");
    let to = wharf.image("mirror/app:v1");
    let total: u64 = img.children.iter().map(|c| c.total_size()).sum::<u64>() + img.index.size();

    let first = Arc::new(Notify::new());
    let opts = wharf_mirror::CopyOptions { jobs: 1, ..options(&[]) };
    let copier = Copier::new(opts.clone(), Arc::new(FirstBlob(first.clone())));
    tokio::select! {
        r = copier.copy(&from, &to) => panic!("the copy should have been interrupted: {r:?}"),
        _ = first.notified() => {}
    }
    drop(copier);
    assert!(!wharf.has_manifest("mirror/app", "v1").await, "an interrupted copy must not publish the index");

    let report = copy(&from, &to, &opts).await.unwrap();
    assert!(report.bytes_existing > 0, "{report:#?}");
    assert!(report.bytes_copied < total, "{report:#?}");
    assert_eq!(report.bytes_copied + report.bytes_existing, total);
    assert_eq!(report.images[0].destination_digest.to_string(), img.index.digest);
    assert_eq!(wharf.present_platforms("mirror/app", "v1").await.len(), 4);
}
