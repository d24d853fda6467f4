//! The report of a run, for people (one line per image, totals, failures) and scripts
//! (`--json`).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use wharf_mirror::CopyReport;
use wharf_oci::Digest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Something was sent, or the tag was moved to it.
    Copied,
    /// Everything was there already, the tag too.
    UpToDate,
    Failed,
    /// Dry run: a copy would send something or move the tag.
    Planned,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Copied => "copied",
            Status::UpToDate => "up-to-date",
            Status::Failed => "failed",
            Status::Planned => "planned",
        }
    }
}

/// One image (a source tag or digest) of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRow {
    /// The source image (`docker://HOST/team/app:v1.2.0`).
    pub source: String,
    /// The tag (or digest) selected.
    pub tag: String,
    pub destination: String,
    /// The source image's digest (an index's stays the same at the destination).
    pub digest: Option<Digest>,
    /// Differs from `digest` only if the index was rewritten.
    pub destination_digest: Option<Digest>,
    pub status: Status,
    pub error: Option<String>,
    /// Platforms copied (or, in a dry run, to copy), left out by the filter, absent at a
    /// sparse source.
    pub platforms: Vec<String>,
    pub platforms_filtered: Vec<String>,
    pub platforms_absent_at_source: Vec<String>,
    pub bytes_copied: u64,
    pub bytes_existing: u64,
    pub bytes_filtered: u64,
}

impl ImageRow {
    pub(crate) fn failed(source: String, tag: String, destination: String, error: String) -> ImageRow {
        ImageRow {
            source,
            tag,
            destination,
            digest: None,
            destination_digest: None,
            status: Status::Failed,
            error: Some(error),
            platforms: Vec::new(),
            platforms_filtered: Vec::new(),
            platforms_absent_at_source: Vec::new(),
            bytes_copied: 0,
            bytes_existing: 0,
            bytes_filtered: 0,
        }
    }

    /// The row of a finished copy (one image).
    pub(crate) fn from_copy(tag: String, report: &CopyReport, dry_run: bool) -> ImageRow {
        let image = report.images.first();
        let changed = report.bytes_copied > 0 || image.is_some_and(|i| i.tag_updated);
        let status = match (changed, dry_run) {
            (false, _) => Status::UpToDate,
            (true, false) => Status::Copied,
            (true, true) => Status::Planned,
        };
        ImageRow {
            source: image.map(|i| i.source.clone()).unwrap_or_default(),
            tag,
            destination: image.map(|i| i.destination.clone()).unwrap_or_default(),
            digest: image.map(|i| i.source_digest.clone()),
            destination_digest: image.map(|i| i.destination_digest.clone()),
            status,
            error: None,
            platforms: image.map(|i| i.platforms_copied.clone()).unwrap_or_default(),
            platforms_filtered: image.map(|i| i.platforms_filtered.clone()).unwrap_or_default(),
            platforms_absent_at_source: image
                .map(|i| i.platforms_absent_at_source.clone())
                .unwrap_or_default(),
            bytes_copied: report.bytes_copied,
            bytes_existing: report.bytes_existing,
            bytes_filtered: report.bytes_filtered,
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// A plan only: nothing was written; `bytes_copied` is what a run would send.
    pub dry_run: bool,
    /// Bytes sent to the destinations (blobs and manifests).
    pub bytes_copied: u64,
    /// Bytes already there (skipped) or mounted from another repository.
    pub bytes_existing: u64,
    /// Bytes left out by the platform filters.
    pub bytes_filtered: u64,
    pub images: Vec<ImageRow>,
    /// Bundle files written (every part of a split archive).
    pub archives: Vec<PathBuf>,
    pub warnings: Vec<String>,
    /// Failures of the run itself, not of one image (e.g. writing the archive).
    pub errors: Vec<String>,
}

impl SyncReport {
    pub(crate) fn add(&mut self, row: ImageRow) {
        self.bytes_copied += row.bytes_copied;
        self.bytes_existing += row.bytes_existing;
        self.bytes_filtered += row.bytes_filtered;
        self.images.push(row);
    }

    /// Add another run's rows, totals, bundles, warnings and errors.
    pub(crate) fn merge(&mut self, other: SyncReport) {
        for row in other.images {
            self.add(row);
        }
        self.archives.extend(other.archives);
        self.warnings.extend(other.warnings);
        self.errors.extend(other.errors);
    }

    pub fn failed(&self) -> impl Iterator<Item = &ImageRow> {
        self.images.iter().filter(|r| r.status == Status::Failed)
    }

    /// Nothing failed: neither an image nor the run.
    pub fn is_success(&self) -> bool {
        self.errors.is_empty() && self.failed().next().is_none()
    }

    fn count(&self, status: Status) -> usize {
        self.images.iter().filter(|r| r.status == status).count()
    }

    /// The report for people: one line per image, the totals, then what failed and why.
    pub fn human(&self) -> String {
        let mut out = String::new();
        if self.dry_run {
            out.push_str("plan (dry run: nothing was written)\n");
        }
        for r in &self.images {
            let _ = write!(out, "{:<10} {} -> {}", r.status.as_str(), r.source, r.destination);
            if let Some(d) = &r.digest {
                let _ = write!(out, "  {}", short(d));
            }
            if !r.platforms.is_empty() {
                let _ = write!(out, "  [{}]", r.platforms.join(", "));
            }
            if r.status != Status::Failed {
                let moved = if self.dry_run { "to move" } else { "copied" };
                let _ = write!(
                    out,
                    "  {} {moved}, {} there",
                    human_bytes(r.bytes_copied),
                    human_bytes(r.bytes_existing)
                );
                if r.bytes_filtered > 0 {
                    let _ = write!(out, ", {} left out", human_bytes(r.bytes_filtered));
                }
            }
            if !r.platforms_absent_at_source.is_empty() {
                let _ = write!(out, "  (absent at the source: {})", r.platforms_absent_at_source.join(", "));
            }
            out.push('\n');
        }
        let verb = if self.dry_run { "to move" } else { "copied" };
        let _ = writeln!(
            out,
            "{} images: {} {}, {} up to date, {} failed; {} {verb}, {} already there, {} left out by the platform filter",
            self.images.len(),
            self.count(if self.dry_run { Status::Planned } else { Status::Copied }),
            if self.dry_run { "planned" } else { "copied" },
            self.count(Status::UpToDate),
            self.count(Status::Failed),
            human_bytes(self.bytes_copied),
            human_bytes(self.bytes_existing),
            human_bytes(self.bytes_filtered),
        );
        for a in &self.archives {
            let _ = writeln!(out, "wrote {}", a.display());
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        if self.failed().next().is_some() {
            out.push_str("failed:\n");
            for r in self.failed() {
                let _ = writeln!(out, "  {}: {}", r.source, r.error.as_deref().unwrap_or("unknown error"));
            }
        }
        for e in &self.errors {
            let _ = writeln!(out, "error: {e}");
        }
        out
    }
}

/// `sha256:0123456789ab`: a digest shortened for people.
pub fn short(d: &Digest) -> String {
    let hex = d.hex();
    format!("{}:{}", d.algorithm().as_str(), &hex[..hex.len().min(12)])
}

/// `1.5 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_report_lists_failures_last() {
        let mut r = SyncReport::default();
        r.add(ImageRow::failed(
            "docker://h/a:v1".into(),
            "v1".into(),
            "docker://d/a:v1".into(),
            "not found".into(),
        ));
        let text = r.human();
        assert!(text.starts_with("failed     docker://h/a:v1 -> docker://d/a:v1"), "{text}");
        assert!(text.contains("1 images: 0 copied, 0 up to date, 1 failed"), "{text}");
        assert!(text.ends_with("failed:\n  docker://h/a:v1: not found\n"), "{text}");
        assert!(!r.is_success());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["images"][0]["status"], "failed");
        assert_eq!(json["images"][0]["error"], "not found");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10), "10 B");
    }
}
