//! A run with missing source images: each is reported by name with its reason, the run's
//! result is a failure, and every other image is still mirrored.

use wharf_sync::Status;

use crate::harness::*;

#[tokio::test]
async fn missing_images_are_reported_and_the_rest_complete() {
    let fleet = Fleet::start().await;
    let wharf = Wharf::sparse().await;
    let cfg = config(
        &format!("platforms = [\"linux/amd64\"]\ndest = \"docker://{}/mirror\"", wharf.addr),
        &[
            entry(&fleet.source("team/app"), "tags = [\"v1.0.0\", \"v9.9.9\"]"),
            entry(&fleet.source("team/ghost"), "tags = [\"v1\"]"),
            entry(&fleet.source("team/nothing"), "tags_semver = \">=1\""),
            entry(&fleet.source("infra/proxy"), "tags_latest = 1"),
            // The same destination name as team/app:v1.0.0: refused, not raced.
            entry(
                &fleet.source("team/db"),
                &format!("tags = [\"v1.0.0\"]\ndest = \"docker://{}/mirror/team/app\"", wharf.addr),
            ),
        ],
    );
    let report = run(&cfg).await;
    assert!(!report.is_success());

    let by_source = |s: &str| {
        report
            .images
            .iter()
            .find(|r| r.source.ends_with(s))
            .unwrap_or_else(|| panic!("{s}: {}", report.human()))
    };
    for (source, reason) in [
        ("/team/app:v9.9.9", "team/app:v9.9.9 not found"),
        ("/team/ghost:v1", "team/ghost:v1 not found"),
        ("/team/nothing", "repository team/nothing not found"),
    ] {
        let row = by_source(source);
        assert_eq!(row.status, Status::Failed, "{row:?}");
        let error = row.error.as_deref().unwrap();
        assert!(error.contains(reason), "{source}: {error}");
    }
    let collision = by_source("/team/db:v1.0.0");
    assert_eq!(collision.status, Status::Failed);
    assert!(collision.error.as_deref().unwrap().contains("two images cannot have one destination name"));
    assert_eq!(report.failed().count(), 4);

    // The others completed.
    assert_eq!(by_source("/team/app:v1.0.0").status, Status::Copied);
    assert_eq!(by_source("/infra/proxy:v2.0.0").status, Status::Copied, "newest by semver");
    let app = wharf.tag_digest("mirror/team/app", "v1.0.0").await;
    assert_eq!(app.as_deref(), Some(fleet.image("team/app", "v1.0.0").index.digest.as_str()));
    assert!(wharf.tag_digest("mirror/infra/proxy", "v2.0.0").await.is_some());

    // People see every failure, by name, after the totals.
    let text = report.human();
    let failed = text.split("failed:\n").nth(1).unwrap_or_else(|| panic!("{text}"));
    for name in ["team/app:v9.9.9", "team/ghost:v1", "team/nothing"] {
        assert!(failed.contains(name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("6 images: 2 copied, 0 up to date, 4 failed"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    let failed_json: Vec<_> =
        json["images"].as_array().unwrap().iter().filter(|i| i["status"] == "failed").collect();
    assert_eq!(failed_json.len(), 4);
    assert!(failed_json.iter().all(|i| i["error"].as_str().is_some_and(|e| !e.is_empty())));
}
