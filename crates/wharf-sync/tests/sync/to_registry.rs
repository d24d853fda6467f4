//! A fleet from distribution 2.8 into Wharf: a semver range, a platform filter, each shared
//! blob moved once, then nothing, then only a new platform, then a moved tag.

use std::sync::Arc;

use wharf_mirror::BlobOutcome;
use wharf_sync::Status;

use crate::harness::*;

const SELECTED: [&str; 2] = ["v1.1.0", "v1.2.0"];

fn fleet_config(fleet: &Fleet, wharf: &Wharf, platforms: &str) -> wharf_sync::SyncConfig {
    let entries: Vec<String> =
        REPOS.iter().map(|r| entry(&fleet.source(r), "tags_semver = \">=1.1, <2\"")).collect();
    config(
        &format!(
            "platforms = [{platforms}]\ndest = \"docker://{}/mirror\"\nsrc_tls_verify = false\n\
             dest_tls_verify = false\njobs = 4",
            wharf.addr
        ),
        &entries,
    )
}

#[tokio::test]
async fn semver_platforms_once_then_nothing_then_a_platform_then_a_moved_tag() {
    let mut fleet = Fleet::start().await;
    let wharf = Wharf::sparse().await;
    let two = r#""linux/amd64", "linux/arm64""#;
    let recorder = Arc::new(Recorder::default());
    let first = run_recorded(&fleet_config(&fleet, &wharf, two), recorder.clone()).await;
    assert_success(&first);
    eprintln!(
        "first run: {} bytes copied, {} existing\n{}",
        first.bytes_copied,
        first.bytes_existing,
        first.human()
    );

    // The range selects exactly v1.1.0 and v1.2.0 of each repository, named by the prefix rule.
    let mut got: Vec<(String, String)> =
        first.images.iter().map(|r| (r.source.clone(), r.tag.clone())).collect();
    got.sort();
    let mut want: Vec<(String, String)> = Vec::new();
    for r in REPOS {
        want.extend(SELECTED.iter().map(|t| (format!("{}:{t}", fleet.source(r)), t.to_string())));
    }
    want.sort();
    assert_eq!(got, want);
    for row in &first.images {
        assert_eq!(row.status, Status::Copied, "{row:?}");
        assert_eq!(row.platforms, ["linux/amd64", "linux/arm64"]);
        let repo = REPOS.iter().find(|r| row.source.contains(&format!("/{r}:"))).unwrap();
        assert_eq!(row.destination, format!("docker://{}/mirror/{repo}:{}", wharf.addr, row.tag));
        assert_eq!(row.digest.as_ref().unwrap().to_string(), fleet.image(repo, &row.tag).index.digest);
    }

    // The platform filter holds, the index is byte for byte, unselected tags are not there.
    for repo in REPOS {
        for tag in SELECTED {
            let dest = format!("mirror/{repo}");
            assert_eq!(wharf.present_platforms(&dest, tag).await, ["linux/amd64", "linux/arm64"]);
            assert_eq!(wharf.tag_digest(&dest, tag).await.unwrap(), fleet.image(repo, tag).index.digest);
        }
        for tag in ["v1.0.0", "v2.0.0", "latest"] {
            assert_eq!(wharf.tag_digest(&format!("mirror/{repo}"), tag).await, None, "{repo}:{tag}");
        }
    }

    // Every selected blob and manifest moved once; the shared base layer once in all, then
    // mounted into the other repositories.
    let selected: Vec<_> = REPOS.iter().flat_map(|r| SELECTED.iter().map(|t| fleet.image(r, t))).collect();
    let base = base_layer(selected[0]);
    let distinct: u64 = selected
        .iter()
        .map(|img| img.index.size() + own_bytes(img, "linux/amd64") + own_bytes(img, "linux/arm64"))
        .sum::<u64>()
        + base.size();
    assert_eq!(first.bytes_copied, distinct, "{}", first.human());
    assert_eq!(
        first.bytes_existing,
        5 * base.size(),
        "the base layer is there (or mounted) for 5 of 6 images"
    );
    let left_out: u64 = selected
        .iter()
        .map(|img| img.platform("linux/arm/v7").total_size() + img.platform("linux/s390x").total_size())
        .sum();
    assert_eq!(first.bytes_filtered, left_out);
    let base_outcomes = recorder.outcomes(&base.digest);
    let count = |f: fn(&BlobOutcome) -> bool| base_outcomes.iter().filter(|o| f(o)).count();
    assert_eq!(count(|o| matches!(o, BlobOutcome::Copied(_))), 1, "{base_outcomes:?}");
    assert_eq!(count(|o| matches!(o, BlobOutcome::Mounted)), 2, "{base_outcomes:?}");
    assert_eq!(base_outcomes.len(), 6, "{base_outcomes:?}");
    // 6 images x 2 platforms x (config + own layer), plus the base layer: each copied once.
    assert_eq!(recorder.copies(), 6 * 2 * 2 + 1);

    // JSON: the figures and one entry per image.
    let json = serde_json::to_value(&first).unwrap();
    assert_eq!(json["bytes_copied"], first.bytes_copied);
    assert_eq!(json["bytes_filtered"], first.bytes_filtered);
    assert_eq!(json["images"][0]["status"], "copied");
    assert!(json["images"][0]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(json["images"][0]["error"].is_null());

    // Again: nothing moves.
    let second = run(&fleet_config(&fleet, &wharf, two)).await;
    assert_success(&second);
    eprintln!(
        "second run: {} bytes copied, {} existing\n{}",
        second.bytes_copied,
        second.bytes_existing,
        second.human()
    );
    assert_eq!(second.bytes_copied, 0, "{}", second.human());
    assert_eq!(second.bytes_existing, first.bytes_copied + first.bytes_existing);
    assert!(second.images.iter().all(|r| r.status == Status::UpToDate), "{}", second.human());

    // A third platform: only its images move (the base layer is there).
    let three = r#""linux/amd64", "linux/arm64", "linux/s390x""#;
    let third = run(&fleet_config(&fleet, &wharf, three)).await;
    assert_success(&third);
    let s390x: u64 = selected.iter().map(|img| own_bytes(img, "linux/s390x")).sum();
    assert_eq!(third.bytes_copied, s390x, "{}", third.human());
    for repo in REPOS {
        assert_eq!(
            wharf.present_platforms(&format!("mirror/{repo}"), "v1.2.0").await,
            ["linux/amd64", "linux/arm64", "linux/s390x"]
        );
    }

    // A tag that moved upstream is updated; the rest is up to date.
    let moved = fleet.move_tag("team/db", "v1.2.0", 900).await.clone();
    let fourth = run(&fleet_config(&fleet, &wharf, three)).await;
    assert_success(&fourth);
    for row in &fourth.images {
        let is_moved = row.source.ends_with("/team/db:v1.2.0");
        assert_eq!(row.status, if is_moved { Status::Copied } else { Status::UpToDate }, "{row:?}");
    }
    assert_eq!(wharf.tag_digest("mirror/team/db", "v1.2.0").await.unwrap(), moved.index.digest);
    let moved_bytes = moved.index.size()
        + ["linux/amd64", "linux/arm64", "linux/s390x"].iter().map(|p| own_bytes(&moved, p)).sum::<u64>();
    assert_eq!(fourth.bytes_copied, moved_bytes, "{}", fourth.human());
}
