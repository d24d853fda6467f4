//! Air-gapped mirroring in two steps: the fleet into one bundle (`oci-archive:`, `oci:`),
//! checked (`verify`), split (`max_archive_size`), then loaded into Wharf with the same index
//! digests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wharf_mirror::NoProgress;
use wharf_sync::{Defaults, Status, SyncOptions, SyncReport, load_bundle, verify_bundle};

use crate::harness::*;

const SELECTED: [&str; 2] = ["v1.1.0", "v1.2.0"];
const TWO: &str = r#"platforms = ["linux/amd64", "linux/arm64"]"#;

fn bundle_config(fleet: &Fleet, dest: &str) -> wharf_sync::SyncConfig {
    let entries: Vec<String> =
        REPOS.iter().map(|r| entry(&fleet.source(r), "tags_semver = \">=1.1, <2\"")).collect();
    config(&format!("{TWO}\ndest = \"{dest}\""), &entries)
}

async fn sync_with(config: &wharf_sync::SyncConfig, max_archive_size: Option<u64>) -> SyncReport {
    let opts = SyncOptions { max_archive_size, ..options() };
    wharf_sync::sync(config, &opts, Arc::new(NoProgress)).await.unwrap()
}

async fn load(from: &Path, wharf: &Wharf, prefix: &str) -> SyncReport {
    let to = format!("docker://{}/{prefix}", wharf.addr);
    load_bundle(from.to_str().unwrap(), &to, &Defaults::default(), &options(), Arc::new(NoProgress))
        .await
        .unwrap()
}

/// Every selected image is in Wharf under `prefix` with the source's index digest, and only the
/// two platforms (a sparse index, kept sparse).
async fn assert_loaded(fleet: &Fleet, wharf: &Wharf, prefix: &str) {
    for repo in REPOS {
        for tag in SELECTED {
            let dest = format!("{prefix}/{repo}");
            let digest = wharf.tag_digest(&dest, tag).await;
            assert_eq!(digest.as_deref(), Some(fleet.image(repo, tag).index.digest.as_str()), "{dest}:{tag}");
            assert_eq!(wharf.present_platforms(&dest, tag).await, ["linux/amd64", "linux/arm64"]);
        }
    }
}

fn part_sizes(parts: &[PathBuf]) -> Vec<u64> {
    parts.iter().map(|p| std::fs::metadata(p).unwrap().len()).collect()
}

#[tokio::test]
async fn archive_bundle_round_trip_and_split() {
    let fleet = Fleet::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.tar");
    let cfg = bundle_config(&fleet, &format!("oci-archive:{}", bundle.display()));

    let first = sync_with(&cfg, None).await;
    assert_success(&first);
    assert_eq!(first.archives, std::slice::from_ref(&bundle), "written once, at the end");
    assert_eq!(first.images.len(), 6);
    let row = first.images.iter().find(|r| r.source.ends_with("/team/app:v1.2.0")).unwrap();
    assert_eq!(row.destination, format!("oci-archive:{}:team/app:v1.2.0", bundle.display()));
    // skopeo reads an image by its bundle name, byte for byte.
    let raw = wharf_testkit::skopeo_inspect_raw(&format!("oci-archive:{}:team/app:v1.2.0", bundle.display()));
    assert_eq!(wharf_testkit::sha256_digest(&raw), fleet.image("team/app", "v1.2.0").index.digest);

    // Again: up to date, and the archive is not rewritten.
    let written = std::fs::metadata(&bundle).unwrap().modified().unwrap();
    let again = sync_with(&cfg, None).await;
    assert_success(&again);
    assert_eq!(again.bytes_copied, 0, "{}", again.human());
    assert!(again.images.iter().all(|r| r.status == Status::UpToDate));
    assert!(again.archives.is_empty());
    assert_eq!(std::fs::metadata(&bundle).unwrap().modified().unwrap(), written);

    // Checked before it travels.
    let check = verify_bundle(bundle.to_str().unwrap()).await.unwrap();
    assert!(check.is_ok(), "{}", check.human());
    assert_eq!(check.parts[0].entries, 6);
    assert_eq!(check.parts[0].absent_children, 6 * 2, "two platforms left out of each index");

    // Into Wharf: the same index digests, still sparse; each blob moved once.
    let wharf = Wharf::sparse().await;
    let loaded = load(&bundle, &wharf, "site").await;
    assert_success(&loaded);
    assert_eq!(loaded.images.len(), 6);
    assert_eq!(loaded.bytes_copied, first.bytes_copied, "{}", loaded.human());
    assert_loaded(&fleet, &wharf, "site").await;

    // Split: every part at most the limit, each a whole layout; loaded back from the first part.
    let split = dir.path().join("split.tar");
    let cfg = bundle_config(&fleet, &format!("oci-archive:{}", split.display()));
    let max = 40 * 1024;
    let report = sync_with(&cfg, Some(max)).await;
    assert_success(&report);
    let parts = report.archives.clone();
    assert!(parts.len() >= 2, "{parts:?}");
    assert_eq!(parts[0], split);
    assert_eq!(parts[1], dir.path().join("split.tar.part2"));
    assert!(part_sizes(&parts).iter().all(|s| *s <= max), "{:?}", part_sizes(&parts));
    let check = verify_bundle(split.to_str().unwrap()).await.unwrap();
    assert!(check.is_ok(), "{}", check.human());
    assert_eq!(check.parts.len(), parts.len());
    assert_eq!(check.parts.iter().map(|p| p.entries).sum::<usize>(), 6, "each image in exactly one part");
    assert_eq!(check.parts[1].part, Some(2));
    let other = Wharf::sparse().await;
    let loaded = load(&split, &other, "split").await;
    assert_success(&loaded);
    assert_eq!(loaded.images.len(), 6);
    assert_loaded(&fleet, &other, "split").await;

    // A missing part is named, and the other parts still load.
    let last = parts.last().unwrap();
    std::fs::remove_file(last).unwrap();
    let check = verify_bundle(split.to_str().unwrap()).await.unwrap();
    assert!(!check.is_ok());
    assert!(check.human().contains(&last.display().to_string()), "{}", check.human());
    let partial = load(&split, &Wharf::sparse().await, "partial").await;
    assert!(!partial.is_success());
    assert!(partial.errors[0].contains("parts"), "{:?}", partial.errors);

    // An image bigger than the limit gets a part of its own, with a warning.
    let tiny = dir.path().join("tiny.tar");
    let cfg = bundle_config(&fleet, &format!("oci-archive:{}", tiny.display()));
    let report = sync_with(&cfg, Some(4096)).await;
    assert_success(&report);
    assert_eq!(report.archives.len(), 6);
    assert_eq!(
        report.warnings.iter().filter(|w| w.contains("part of its own")).count(),
        6,
        "{:?}",
        report.warnings
    );
}

#[tokio::test]
async fn verify_catches_a_corrupt_blob() {
    let fleet = Fleet::start().await;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let cfg = config(
        &format!("{TWO}\ndest = \"oci:{}\"", layout.display()),
        &[entry(&fleet.source("team/app"), "tags = [\"v1.1.0\"]")],
    );
    let report = sync_with(&cfg, None).await;
    assert_success(&report);
    let check = verify_bundle(&format!("oci:{}", layout.display())).await.unwrap();
    assert!(check.is_ok(), "{}", check.human());

    // Flip one byte of a layer.
    let layer = &fleet.image("team/app", "v1.1.0").platform("linux/amd64").layers[1];
    let hex = wharf_testkit::digest_hex(&layer.digest);
    let file = layout.join("blobs/sha256").join(hex);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let check = verify_bundle(layout.to_str().unwrap()).await.unwrap();
    assert!(!check.is_ok());
    let text = check.human();
    assert!(text.contains(&format!("blobs/sha256/{hex}: corrupt blob")), "{text}");
    assert!(text.contains("team/app:v1.1.0: needs"), "{text}");
    assert!(text.contains("CORRUPT"), "{text}");
}

#[tokio::test]
async fn verify_catches_a_corrupt_blob_inside_an_archive() {
    let fleet = Fleet::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("b.tar");
    let cfg = config(
        &format!("{TWO}\ndest = \"oci-archive:{}\"", bundle.display()),
        &[entry(&fleet.source("team/db"), "tags = [\"latest\"]")],
    );
    assert_success(&sync_with(&cfg, None).await);
    let config_blob = &fleet.image("team/db", "latest").platform("linux/arm64").config;
    let hex = wharf_testkit::digest_hex(&config_blob.digest).to_owned();

    // Find the blob's bytes in the tar and flip one.
    let offset = {
        let mut archive = tar::Archive::new(std::fs::File::open(&bundle).unwrap());
        let mut entries = archive.entries().unwrap();
        let entry = entries
            .find(|e| e.as_ref().unwrap().path().unwrap().ends_with(&hex))
            .expect("the blob is in the archive")
            .unwrap();
        entry.raw_file_position()
    };
    let mut bytes = std::fs::read(&bundle).unwrap();
    bytes[offset as usize + 5] ^= 0x01;
    std::fs::write(&bundle, bytes).unwrap();

    let check = verify_bundle(bundle.to_str().unwrap()).await.unwrap();
    assert!(!check.is_ok());
    assert!(check.human().contains(&format!("blobs/sha256/{hex}: corrupt blob")), "{}", check.human());
}
