//! Checking a bundle before it travels: re-hash every blob of a layout (or archive) and check
//! that every `index.json` entry resolves to what its images need. Children absent from an
//! index are fine (a sparse index); a missing config or layer, or any byte out of place, is not.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use wharf_oci::{Descriptor, Digest, Manifest, media_types};

use crate::layout::REF_NAME;
use crate::split::{PART_ANNOTATION, PARTS_ANNOTATION};
use crate::{MirrorError, archive};

/// What [`verify_layout`] or [`verify_archive`] found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    /// The layout directory or archive file checked.
    pub location: PathBuf,
    /// Blobs re-hashed, and their bytes.
    pub blobs: u64,
    pub bytes: u64,
    /// Entries of `index.json`.
    pub entries: usize,
    /// Children of indexes that the layout does not hold (sparse indexes; not a problem).
    pub absent_children: usize,
    /// For a part of a split bundle: which part, of how many (from its `index.json`).
    pub part: Option<usize>,
    pub parts: Option<usize>,
    /// Everything wrong, one line each, naming the blob or entry.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Verify the OCI layout at `dir`.
pub async fn verify_layout(dir: &Path) -> Result<VerifyReport, MirrorError> {
    let dir = dir.to_owned();
    let location = dir.clone();
    let mut report = tokio::task::spawn_blocking(move || check(&dir))
        .await
        .map_err(|e| MirrorError::Invalid(format!("verifying {}: task failed: {e}", location.display())))??;
    report.location = location;
    Ok(report)
}

/// Verify one archive file (one part of a split bundle: each part is a whole layout).
pub async fn verify_archive(file: &Path) -> Result<VerifyReport, MirrorError> {
    let tmp = tempfile::Builder::new()
        .prefix("wharf-verify-")
        .tempdir()
        .map_err(MirrorError::io("creating a temporary directory"))?;
    archive::extract(file, tmp.path()).await?;
    let mut report = verify_layout(tmp.path()).await?;
    report.location = file.to_owned();
    Ok(report)
}

fn check(root: &Path) -> Result<VerifyReport, MirrorError> {
    let mut report = VerifyReport::default();
    let blobs = hash_blobs(root, &mut report)?;
    let index_path = root.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(MirrorError::io("reading index.json"))?;
    let index: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            report.problems.push(format!("index.json is not valid JSON: {e}"));
            return Ok(report);
        }
    };
    let annotation = |k: &str| index["annotations"][k].as_str().and_then(|v| v.parse::<usize>().ok());
    report.part = annotation(PART_ANNOTATION);
    report.parts = annotation(PARTS_ANNOTATION);
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    report.entries = entries.len();
    let mut walker = Walker { root, blobs: &blobs, report: &mut report, seen: HashSet::new() };
    let mut names = HashSet::new();
    for (i, e) in entries.into_iter().enumerate() {
        let desc: Descriptor = match serde_json::from_value(e) {
            Ok(d) => d,
            Err(err) => {
                walker.report.problems.push(format!("index.json entry {i} is not a descriptor: {err}"));
                continue;
            }
        };
        let name = desc.annotations.as_ref().and_then(|a| a.get(REF_NAME)).cloned();
        let label = name.clone().unwrap_or_else(|| format!("entry {i} ({})", desc.digest));
        if let Some(n) = name
            && !names.insert(n.clone())
        {
            walker.report.problems.push(format!("{label}: the name {n} is in index.json twice"));
        }
        walker.walk(&label, &desc, false);
    }
    Ok(report)
}

/// Re-hash every file under `blobs/<algorithm>/`; returns the sound ones with their sizes.
fn hash_blobs(root: &Path, report: &mut VerifyReport) -> Result<HashMap<Digest, u64>, MirrorError> {
    let mut sound = HashMap::new();
    let blobs = root.join("blobs");
    for alg in sorted_names(&blobs)? {
        for name in sorted_names(&blobs.join(&alg))? {
            // Temporary files of an interrupted write are not content.
            if name.starts_with('.') {
                continue;
            }
            let rel = format!("blobs/{alg}/{name}");
            let Ok(digest) = format!("{alg}:{name}").parse::<Digest>() else {
                report.problems.push(format!("{rel}: not a blob (its name is not a digest)"));
                continue;
            };
            let path = blobs.join(&alg).join(&name);
            let (actual, size) =
                hash_file(&path, &digest).map_err(MirrorError::io(format!("reading {rel}")))?;
            report.blobs += 1;
            report.bytes += size;
            if actual == digest {
                sound.insert(digest, size);
            } else {
                report.problems.push(format!("{rel}: corrupt blob: its content hashes to {actual}"));
            }
        }
    }
    Ok(sound)
}

fn hash_file(path: &Path, digest: &Digest) -> std::io::Result<(Digest, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = digest.algorithm().hasher();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finish(), size))
}

fn sorted_names(dir: &Path) -> Result<Vec<String>, MirrorError> {
    let mut names = Vec::new();
    let list = std::fs::read_dir(dir).map_err(MirrorError::io(format!("reading {}", dir.display())))?;
    for entry in list {
        let entry = entry.map_err(MirrorError::io(format!("reading {}", dir.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

struct Walker<'a> {
    root: &'a Path,
    blobs: &'a HashMap<Digest, u64>,
    report: &'a mut VerifyReport,
    /// Manifests already walked (shared across entries).
    seen: HashSet<Digest>,
}

impl Walker<'_> {
    /// Check `desc` (reached from `label`); a child of an index may be absent.
    fn walk(&mut self, label: &str, desc: &Descriptor, may_be_absent: bool) {
        let Some(&size) = self.blobs.get(&desc.digest) else {
            let file = self.root.join("blobs").join(desc.digest.algorithm().as_str()).join(desc.digest.hex());
            if file.exists() {
                // Already reported as corrupt; say who needed it.
                self.report.problems.push(format!("{label}: needs {}, which is corrupt", desc.digest));
            } else if may_be_absent {
                self.report.absent_children += 1;
            } else {
                self.report.problems.push(format!("{label}: {} is missing", desc.digest));
            }
            return;
        };
        if size != desc.size {
            self.report.problems.push(format!(
                "{label}: {} is {size} bytes, but its descriptor says {}",
                desc.digest, desc.size
            ));
            return;
        }
        if !media_types::is_manifest(&desc.media_type) || !self.seen.insert(desc.digest.clone()) {
            return;
        }
        let path = self.root.join("blobs").join(desc.digest.algorithm().as_str()).join(desc.digest.hex());
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| Manifest::parse(Some(&desc.media_type), &b).map_err(|e| e.to_string()));
        let m = match parsed {
            Ok(m) => m,
            Err(e) => {
                self.report.problems.push(format!("{label}: manifest {} is not usable: {e}", desc.digest));
                return;
            }
        };
        for child in m.children() {
            self.walk(label, child, true);
        }
        for blob in m.blobs() {
            if media_types::is_foreign_layer(&blob.media_type) && blob.urls.is_some() {
                continue;
            }
            self.walk(label, blob, false);
        }
    }
}
