//! `wharf gc` and `wharf fsck`: maintenance of a registry's stores, safe while it serves.
//!
//! Both open the stores the way `wharf serve` does (`--config`, `--data-dir`, `--database`,
//! the same defaults), but never create them: pointing at the wrong directory is an error,
//! not an empty registry.
//!
//! `wharf gc [--grace DURATION] [--dry-run] [--json]`: online mark and sweep (see
//! `wharf_registry::gc`). In each repository, blob links that no manifest of that repository
//! references and that are older than the grace period (default 1h) are removed; then blob
//! files no repository links and no manifest references, older than the grace period, are
//! deleted with their `blobs` rows, each re-checked in a transaction during which no blob can be
//! linked, so a concurrent push or mount wins. A blob referenced by any manifest is never
//! deleted; manifests are never deleted. Removing a link restarts its blob's grace period, so a
//! blob goes at the earliest one grace period after its last link. `--dry-run` reports what a
//! run would remove now and changes nothing. The report: links removed (per repository), blobs
//! deleted, bytes freed.
//!
//! `wharf fsck [--json]`: re-hashes every blob file (streaming) against its digest, checks that
//! every linked blob's file exists with the size the metadata records, that every stored
//! manifest's bytes hash to its digest, and that every blob a manifest references is linked
//! to its repository. Reports each problem by digest and repository; exits non-zero if any.

use std::time::Duration;

use anyhow::{Context, bail};
use wharf_metadata::MetadataStore;
use wharf_registry::{GarbageCollector, GcReport, fsck};
use wharf_storage::BlobStore;

use wharf_sync::report::human_bytes;

use crate::stores::{Open, StoreArgs};

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    stores: StoreArgs,
    /// Keep blob links and blob files younger than this, e.g. 30m, 2h, 1d, 1h30m, 0s. It is the
    /// time a push has between uploading a layer and pushing its manifest.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    grace: Duration,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct FsckArgs {
    #[command(flatten)]
    stores: StoreArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run_gc(args: GcArgs) -> anyhow::Result<()> {
    let (blobs, meta) = open_stores(&args.stores).await?;
    // The same lock as the collection inside `wharf serve`: one collector at a time per database.
    let lock =
        if args.dry_run { None } else { meta.try_lock("job:gc").await.context("taking the gc lock")? };
    if !args.dry_run && lock.is_none() {
        meta.close().await;
        bail!("garbage collection is already running (a replica holds the gc lock); try again later");
    }
    let result = GarbageCollector::new(blobs, meta.clone(), args.grace).run(args.dry_run).await;
    if let Some(lock) = lock {
        lock.release().await.context("releasing the gc lock")?;
    }
    meta.close().await;
    let report = result.context("garbage collection")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", human_gc(&report));
    }
    Ok(())
}

pub async fn run_fsck(args: FsckArgs) -> anyhow::Result<()> {
    let (blobs, meta) = open_stores(&args.stores).await?;
    let result = fsck(&blobs, &meta).await;
    meta.close().await;
    let report = result.context("fsck")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for problem in &report.problems {
            println!("{problem}");
        }
        println!("fsck: {}", report.summary());
    }
    if !report.is_clean() {
        bail!("fsck found {} problem(s)", report.problems.len());
    }
    Ok(())
}

fn human_gc(r: &GcReport) -> String {
    let mut out = format!("gc: {}\n", r.summary());
    for repo in &r.repositories {
        let verb = if r.dry_run { "would unlink" } else { "unlinked" };
        out.push_str(&format!(
            "  {}: {verb} {} blob(s), {}\n",
            repo.repository,
            repo.links_removed,
            human_bytes(repo.bytes_unlinked)
        ));
    }
    if r.dry_run {
        for l in &r.removed_links {
            out.push_str(&format!(
                "  would unlink {} from {} ({})\n",
                l.digest,
                l.repository,
                human_bytes(l.size)
            ));
        }
        for b in &r.deleted_blobs {
            out.push_str(&format!("  would delete {} ({})\n", b.digest, human_bytes(b.size)));
        }
    }
    out
}

/// Opens the blob store and the metadata store of an existing registry.
async fn open_stores(args: &StoreArgs) -> anyhow::Result<(BlobStore, MetadataStore)> {
    let file = args.load_config()?;
    let stores = args.open(&file, Open::Existing).await?;
    Ok((stores.blobs, stores.meta))
}

/// `90s`, `30m`, `2h`, `1d`, `1h30m`, `0s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    wharf_sync::parse_duration(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "h", "1x", "1h30", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
