//! The second air-gapped step, and the check before the first one travels:
//! `--from BUNDLE --to docker://HOST[/PREFIX]` loads every image of a bundle into a registry
//! (`team/app:v1` goes to `HOST/PREFIX/team/app:v1`), and `--from BUNDLE --verify` re-hashes
//! it.
//!
//! A bundle is `oci:DIR`, `oci-archive:FILE`, or a path (a directory is a layout, a file an
//! archive). A split archive is named by its first part `FILE` (or any part): the parts
//! `FILE.part2`, `FILE.part3`, ... are found beside it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use wharf_mirror::{
    Copier, ImageRef, Progress, RefName, VerifyReport, archive_parts, verify_archive, verify_layout,
};

use crate::SyncError;
use crate::config::Defaults;
use crate::naming::{Destination, Rule};
use crate::plan::{Planned, Task};
use crate::report::{ImageRow, SyncReport};
use crate::run::{DEFAULT_JOBS, SyncOptions, copy_options, execute};

/// A bundle on disk: one layout directory, or an archive and its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bundle {
    Layout(PathBuf),
    Archive(Vec<PathBuf>),
}

impl Bundle {
    pub fn open(from: &str) -> Result<Bundle, SyncError> {
        let bad = |why: String| SyncError::Invalid(format!("bundle {from:?}: {why}"));
        if from.contains(['*', '?', '[']) {
            return Err(bad(
                "name the first part (FILE); its other parts (FILE.part2, ...) are found beside it".into(),
            ));
        }
        let (path, archive) = if from.starts_with("oci:") || from.starts_with("oci-archive:") {
            let r: ImageRef = from.parse()?;
            match r {
                ImageRef::Oci { path, name: None } => (path, Some(false)),
                ImageRef::OciArchive { path, name: None } => (path, Some(true)),
                _ => return Err(bad("name the whole bundle, without an image name".into())),
            }
        } else {
            (PathBuf::from(from), None)
        };
        let meta = std::fs::metadata(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        match archive.unwrap_or(!meta.is_dir()) {
            false => Ok(Bundle::Layout(path)),
            true => Ok(Bundle::Archive(archive_parts(&path))),
        }
    }

    /// Each part as an image reference without a name.
    fn parts(&self) -> Vec<ImageRef> {
        match self {
            Bundle::Layout(p) => vec![ImageRef::Oci { path: p.clone(), name: None }],
            Bundle::Archive(parts) => {
                parts.iter().map(|p| ImageRef::OciArchive { path: p.clone(), name: None }).collect()
            }
        }
    }
}

fn with_name(part: &ImageRef, name: RefName) -> ImageRef {
    match part {
        ImageRef::OciArchive { path, .. } => ImageRef::OciArchive { path: path.clone(), name: Some(name) },
        ImageRef::Oci { path, .. } => ImageRef::Oci { path: path.clone(), name: Some(name) },
        other => other.clone(),
    }
}

/// cosign's signature names travel with the image they sign, not as images.
fn is_referrer_name(n: &str) -> bool {
    n.starts_with("sha256-") || n.starts_with("sha512-")
}

/// Load every image of the bundle at `from` into the registry `to` (`docker://HOST[/PREFIX]`),
/// copying what the bundle holds: a sparse index stays sparse (the destination must accept
/// it).
pub async fn load_bundle(
    from: &str,
    to: &str,
    defaults: &Defaults,
    opts: &SyncOptions,
    progress: Arc<dyn Progress>,
) -> Result<SyncReport, SyncError> {
    let bundle = Bundle::open(from)?;
    let dest: Destination = to.parse()?;
    if dest.is_bundle() {
        return Err(SyncError::Invalid(format!(
            "--to {to}: load a bundle into a registry, docker://HOST[/PREFIX]"
        )));
    }
    let copier = Copier::new(copy_options(defaults, opts)?, progress);
    let jobs = defaults.jobs.unwrap_or(DEFAULT_JOBS).max(1);
    let (mut planned, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let parts = bundle.parts();
    for (i, part) in parts.iter().enumerate() {
        if i == 0
            && let Some((_, count)) = copier.bundle_part(part).await?
            && count != parts.len()
        {
            errors.push(format!(
                "{part} says the bundle has {count} parts, but {} were found beside it: the images of the \
                 missing parts were not loaded",
                parts.len()
            ));
        }
        let names = match copier.source_tags(part).await {
            Ok(n) => n,
            Err(e) => {
                planned.push(Planned::Failed(ImageRow::failed(
                    part.to_string(),
                    String::new(),
                    to.into(),
                    e.to_string(),
                )));
                continue;
            }
        };
        for n in names {
            let split = n.parse::<RefName>().ok().and_then(|r| r.split_repository().map(|s| (r, s)));
            let Some((name, (repo, reference))) = split else {
                if !is_referrer_name(&n) {
                    warnings.push(format!(
                        "{part}: the name {n:?} is not REPOSITORY:TAG, so it names no destination; skipped"
                    ));
                }
                continue;
            };
            let tag = reference.to_string();
            let source = with_name(part, name);
            match dest.image_ref(repo.as_str(), &reference, Rule::Prefix) {
                Ok(destination) => planned.push(Planned::Copy(Task {
                    source,
                    destination,
                    tag,
                    platforms: Vec::new(),
                    verify_keys: None,
                })),
                Err(e) => planned.push(Planned::Failed(ImageRow::failed(
                    source.to_string(),
                    tag,
                    to.into(),
                    e.to_string(),
                ))),
            }
        }
    }
    let mut report = execute(&copier, planned, jobs, opts.dry_run).await;
    report.warnings.splice(0..0, warnings);
    report.errors.splice(0..0, errors);
    Ok(report)
}

/// What `--verify` found in each part.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BundleVerification {
    pub parts: Vec<VerifyReport>,
    /// Problems of the bundle as a whole (a missing part).
    pub problems: Vec<String>,
}

impl BundleVerification {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.parts.iter().all(VerifyReport::is_ok)
    }

    pub fn human(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            let _ = write!(
                out,
                "{}: {} blobs re-hashed ({}), {} index.json entries",
                p.location.display(),
                p.blobs,
                crate::report::human_bytes(p.bytes),
                p.entries
            );
            if p.absent_children > 0 {
                let _ = write!(out, ", {} index children absent (sparse)", p.absent_children);
            }
            out.push_str(if p.is_ok() { ": OK\n" } else { ": CORRUPT\n" });
            for problem in &p.problems {
                let _ = writeln!(out, "  {problem}");
            }
        }
        for problem in &self.problems {
            let _ = writeln!(out, "{problem}");
        }
        out
    }
}

/// Re-hash every blob and manifest of the bundle and check that every `index.json` entry
/// resolves.
pub async fn verify_bundle(from: &str) -> Result<BundleVerification, SyncError> {
    let bundle = Bundle::open(from)?;
    let mut out = BundleVerification::default();
    match &bundle {
        Bundle::Layout(dir) => out.parts.push(verify_layout(dir).await?),
        Bundle::Archive(parts) => {
            for p in parts {
                out.parts.push(verify_archive(p).await?);
            }
        }
    }
    if let Some(count) = out.parts.first().and_then(|p| p.parts)
        && count != out.parts.len()
    {
        out.problems.push(format!(
            "the bundle has {count} parts (by its index.json), but {} were found: {}",
            out.parts.len(),
            missing_parts(&bundle, count)
        ));
    }
    Ok(out)
}

fn missing_parts(bundle: &Bundle, count: usize) -> String {
    let Bundle::Archive(parts) = bundle else { return String::new() };
    let Some(first) = parts.first() else { return String::new() };
    let missing: Vec<String> = (1..=count)
        .map(|n| wharf_mirror::part_path(first, n))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        "more than it should have".into()
    } else {
        format!("missing {}", missing.join(", "))
    }
}

/// A size such as `500M`, `2G`, `1.5GiB`, `1048576` (bytes): K, M, G and T are powers of
/// 1024, with or without a trailing `B` or `iB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (number, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, ""),
    };
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("size {s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("size {s:?} is not a number with an optional unit (500M, 2G)"))?;
    // Checked after scaling: "0.5" is more than 0 but not a whole byte.
    let bytes = (value * factor as f64) as u64;
    if !value.is_finite() || bytes == 0 {
        return Err(format!("size {s:?} must be at least one byte"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_below_one_byte_are_refused() {
        for bad in ["0", "0.5", "0.0001K", "-1M", "nanG"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("64KB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        for bad in ["", "M", "5X", "-1G", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bundle_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.tar");
        std::fs::write(&file, b"").unwrap();
        std::fs::write(dir.path().join("b.tar.part2"), b"").unwrap();
        let parts = vec![file.clone(), dir.path().join("b.tar.part2")];
        assert_eq!(Bundle::open(file.to_str().unwrap()).unwrap(), Bundle::Archive(parts.clone()));
        assert_eq!(
            Bundle::open(&format!("oci-archive:{}", parts[1].display())).unwrap(),
            Bundle::Archive(parts)
        );
        let d = dir.path().to_str().unwrap();
        assert_eq!(Bundle::open(d).unwrap(), Bundle::Layout(dir.path().to_owned()));
        assert!(Bundle::open(&format!("{d}/*.tar")).unwrap_err().to_string().contains("first part"));
        assert!(
            Bundle::open(&format!("oci:{d}:team/app:v1")).unwrap_err().to_string().contains("whole bundle")
        );
    }
}
