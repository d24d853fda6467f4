//! `--dry-run`: the plan comes from the copy algorithm itself, writes nothing, and its figures
//! are what the real run then moves.

use std::sync::Arc;

use wharf_mirror::NoProgress;
use wharf_sync::{Status, SyncOptions};

use crate::harness::*;

#[tokio::test]
async fn plan_writes_nothing_and_matches_the_run() {
    let fleet = Fleet::start().await;
    let wharf = Wharf::sparse().await;
    let entries: Vec<String> =
        REPOS.iter().map(|r| entry(&fleet.source(r), "tags = [\"v1.0.0\", \"latest\"]")).collect();
    let cfg = config(
        &format!(
            "platforms = [\"linux/amd64\", \"linux/arm/v7\"]\ndest = \"docker://{}/mirror\"",
            wharf.addr
        ),
        &entries,
    );
    let dry = SyncOptions { dry_run: true, ..options() };

    let plan = wharf_sync::sync(&cfg, &dry, Arc::new(NoProgress)).await.unwrap();
    assert_success(&plan);
    assert!(plan.dry_run);
    assert!(plan.images.iter().all(|r| r.status == Status::Planned), "{}", plan.human());
    assert!(plan.images.iter().all(|r| r.platforms == ["linux/amd64", "linux/arm/v7"]));
    assert!(wharf.catalog().await.is_empty(), "a plan writes nothing");
    let images: Vec<_> = REPOS.iter().flat_map(|r| ["v1.0.0", "latest"].map(|t| fleet.image(r, t))).collect();
    let base = base_layer(images[0]).size();
    let to_move: u64 = images
        .iter()
        .map(|img| img.index.size() + own_bytes(img, "linux/amd64") + own_bytes(img, "linux/arm/v7"))
        .sum::<u64>()
        + base;
    assert_eq!(plan.bytes_copied, to_move, "{}", plan.human());
    assert_eq!(plan.bytes_existing, 5 * base, "planned mounts of the shared base layer");
    let left_out: u64 = images
        .iter()
        .map(|img| img.platform("linux/arm64").total_size() + img.platform("linux/s390x").total_size())
        .sum();
    assert_eq!(plan.bytes_filtered, left_out);
    let text = plan.human();
    assert!(text.starts_with("plan (dry run: nothing was written)"), "{text}");
    assert!(text.contains("6 planned"), "{text}");

    // The run moves exactly what the plan said.
    let real = run(&cfg).await;
    assert_success(&real);
    assert_eq!(real.bytes_copied, plan.bytes_copied);
    assert_eq!(real.bytes_existing, plan.bytes_existing);
    assert_eq!(real.bytes_filtered, plan.bytes_filtered);

    // Planned again: nothing to move.
    let after = wharf_sync::sync(&cfg, &dry, Arc::new(NoProgress)).await.unwrap();
    assert_eq!(after.bytes_copied, 0);
    assert!(after.images.iter().all(|r| r.status == Status::UpToDate), "{}", after.human());

    // A bundle is not created by a plan, and a layout directory not either.
    let dir = tempfile::tempdir().unwrap();
    for dest in [
        format!("oci-archive:{}/b.tar", dir.path().display()),
        format!("oci:{}/layout", dir.path().display()),
    ] {
        let cfg = config(&format!("platforms = [\"linux/amd64\"]\ndest = \"{dest}\""), &entries);
        let plan = wharf_sync::sync(&cfg, &dry, Arc::new(NoProgress)).await.unwrap();
        assert_success(&plan);
        assert!(plan.bytes_copied > 0);
        assert!(plan.archives.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{dest}: a plan writes nothing");
    }
}
