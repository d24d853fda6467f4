//! `wharf report docker://HOST`: a Wharf registry's storage report (its `/v2/_wharf/storage`
//! extension) as a table, or as JSON with `--json`.

use anyhow::{Context, bail};
use wharf_registry::StorageReport;
use wharf_sync::report::human_bytes;

use crate::inspect::{RegistryFlags, approx_bytes};

const STORAGE_REPORT_TYPE: &str = "application/vnd.wharf.storage-report";

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// docker://HOST[:PORT] of a Wharf registry.
    registry: String,
    /// Print the JSON report instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    flags: RegistryFlags,
}

/// `docker://HOST[:PORT]` (the `docker://` prefix is optional; a trailing `/` is fine).
pub(crate) fn parse_registry(arg: &str, command: &str) -> anyhow::Result<String> {
    let rest = match arg.split_once("://") {
        Some(("docker", rest)) => rest,
        Some(_) => bail!("wharf {command} reads registries: use docker://HOST[:PORT], not {arg:?}"),
        None if arg.starts_with("oci:") || arg.starts_with("oci-archive:") => {
            bail!("wharf {command} reads registries: use docker://HOST[:PORT], not {arg:?}")
        }
        None => arg,
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains(['/', '@']) || host.contains(char::is_whitespace) {
        bail!("wharf {command} takes a registry, docker://HOST[:PORT], not an image or path: {arg:?}");
    }
    Ok(host.to_owned())
}

pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let host = parse_registry(&args.registry, "report")?;
    let client = args.flags.client(&host)?;
    let (status, content_type, body) = client.get_raw("/v2/_wharf/storage").await?;
    let is_report = content_type.as_deref().is_some_and(|c| c.starts_with(STORAGE_REPORT_TYPE));
    if status != 200 || !is_report {
        let said = registry_message(&body).map(|m| format!(": {m}")).unwrap_or_default();
        match status {
            401 | 403 => bail!(
                "{host} refused its storage report (HTTP {status}{said}); it lists the repositories \
                 you may pull and needs what the catalog needs: log in (--creds USER:PASSWORD)"
            ),
            _ => bail!(
                "{host} does not offer Wharf's storage report (GET /v2/_wharf/storage answered HTTP \
                 {status}{said}): it is not a Wharf registry, or a Wharf too old to have the report"
            ),
        }
    }
    let report: StorageReport = serde_json::from_slice(&body).context("reading Wharf's storage report")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&format!("docker://{host}"), &report));
    }
    Ok(())
}

/// The `message` of the first error in an OCI error body, if that is what the body is.
pub(crate) fn registry_message(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["errors"][0]["message"].as_str().map(str::to_owned)
}

/// `~` marks an estimate.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn table(registry: &str, r: &StorageReport) -> String {
    let mut out = format!("{registry}\n");
    if r.repositories.is_empty() {
        out.push_str(if r.filtered { "  (no repository you may pull)\n" } else { "  (no repositories)\n" });
    } else {
        let width = r.repositories.iter().map(|x| x.repository.len()).max().unwrap_or(0).max(10);
        let row =
            |name: &str, manifests: String, indexes: String, sparse: String, stored: String, full: String| {
                format!(
                    "  {name:<width$}  {manifests:>9}  {indexes:>7}  {sparse:>6}  {stored:>10}  {full:>23}\n"
                )
            };
        out.push('\n');
        out.push_str(&row(
            "REPOSITORY",
            "MANIFESTS".into(),
            "INDEXES".into(),
            "SPARSE".into(),
            "STORED".into(),
            "FULL INDEXES WOULD NEED".into(),
        ));
        for x in &r.repositories {
            // What the repository would hold with every index complete: what it holds plus
            // what its absent platforms would add.
            let missing = x.full_bytes.saturating_sub(x.present_bytes);
            out.push_str(&row(
                &x.repository,
                x.manifests.to_string(),
                x.indexes.to_string(),
                x.sparse_indexes.to_string(),
                human_bytes(x.linked_blob_bytes),
                approx_bytes(x.linked_blob_bytes + missing, x.full_bytes_exact),
            ));
        }
        let t = &r.totals;
        let missing = t.full_bytes.saturating_sub(t.present_bytes);
        out.push_str(&row(
            "TOTAL",
            t.manifests.to_string(),
            t.indexes.to_string(),
            t.sparse_indexes.to_string(),
            human_bytes(t.linked_blob_bytes),
            approx_bytes(t.linked_blob_bytes + missing, t.full_bytes_exact),
        ));
    }
    let t = &r.totals;
    out.push('\n');
    out.push_str(&format!(
        "  {}, {}, {}, {} ({} sparse)\n",
        plural(t.repositories, "repository", "repositories"),
        plural(t.manifests, "manifest", "manifests"),
        plural(t.tags, "tag", "tags"),
        plural(t.indexes, "index", "indexes"),
        t.sparse_indexes
    ));
    out.push_str(&format!(
        "  blob store: {} in {} (a blob shared by repositories counted once; {} summed over them)\n",
        human_bytes(t.unique_blob_bytes),
        plural(t.unique_blobs, "blob", "blobs"),
        human_bytes(t.linked_blob_bytes)
    ));
    if t.indexes > 0 {
        out.push_str(&format!(
            "  indexes: {} stored of {} for every index complete\n",
            human_bytes(t.present_bytes),
            approx_bytes(t.full_bytes, t.full_bytes_exact)
        ));
    }
    if let (Some(n), Some(bytes)) = (t.unlinked_blobs, t.unlinked_blob_bytes)
        && n > 0
    {
        out.push_str(&format!(
            "  not linked to any repository: {} in {} (garbage collection removes them)\n",
            human_bytes(bytes),
            plural(n, "blob", "blobs")
        ));
    }
    if r.filtered {
        out.push_str("  only the repositories you may pull are counted\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_registry::{RepoStorageReport, StorageTotals};

    #[test]
    fn parses_registries() {
        assert_eq!(parse_registry("docker://127.0.0.1:5000", "report").unwrap(), "127.0.0.1:5000");
        assert_eq!(
            parse_registry("docker://registry.example.com/", "report").unwrap(),
            "registry.example.com"
        );
        assert_eq!(parse_registry("localhost:5000", "report").unwrap(), "localhost:5000");
        for bad in ["docker://h/app", "docker://h/app:v1", "oci:/tmp/x", "https://h", "docker://", ""] {
            assert!(parse_registry(bad, "report").is_err(), "{bad}");
        }
    }

    #[test]
    fn table_marks_estimates_and_totals() {
        let sparse = RepoStorageReport {
            repository: "mirror/app".into(),
            manifests: 3,
            tags: 1,
            indexes: 1,
            sparse_indexes: 1,
            linked_blobs: 4,
            linked_blob_bytes: 2048,
            present_bytes: 2100,
            full_bytes: 4200,
            full_bytes_exact: false,
        };
        let report = StorageReport {
            repositories: vec![sparse.clone()],
            totals: StorageTotals {
                repositories: 1,
                manifests: 3,
                tags: 1,
                indexes: 1,
                sparse_indexes: 1,
                linked_blobs: 4,
                linked_blob_bytes: 2048,
                unique_blobs: 4,
                unique_blob_bytes: 2048,
                unlinked_blobs: Some(1),
                unlinked_blob_bytes: Some(12),
                present_bytes: 2100,
                full_bytes: 4200,
                full_bytes_exact: false,
            },
            filtered: false,
        };
        let text = table("docker://h", &report);
        assert!(text.contains("FULL INDEXES WOULD NEED"), "{text}");
        let line = text.lines().find(|l| l.trim_start().starts_with("mirror/app")).unwrap();
        // 2048 stored + 2100 missing = 4148 B = 4.1 KiB, estimated.
        assert!(line.contains("2.0 KiB") && line.ends_with("~4.1 KiB"), "{line}");
        assert!(text.contains("not linked to any repository: 12 B in 1 blob"), "{text}");
        assert!(!text.contains("you may pull"), "{text}");
    }
}
