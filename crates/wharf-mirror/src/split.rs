//! Splitting a bundle into archives of at most N bytes (`--max-archive-size`): each part is a
//! complete OCI layout holding whole images, so each can travel and load on its own. An image
//! (with its children, blobs and referrers) never spans parts; blobs that images in different
//! parts share are in each of those parts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wharf_oci::{Descriptor, Digest, Manifest, media_types};

use crate::MirrorError;
use crate::archive::{pack_selection, part_path};
use crate::layout::{OciLayout, REF_NAME};

/// Annotations of a part's `index.json`: which part this is, and how many there are.
pub(crate) const PART_ANNOTATION_PREFIX: &str = "org.wharf.bundle.";
pub const PART_ANNOTATION: &str = "org.wharf.bundle.part";
pub const PARTS_ANNOTATION: &str = "org.wharf.bundle.parts";

const TAR_BLOCK: u64 = 512;
const COSIGN_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// Entries of `index.json` that travel together, and the blobs they need (digest -> size).
#[derive(Default, Clone)]
struct Unit {
    entries: BTreeSet<usize>,
    blobs: BTreeMap<Digest, u64>,
}

impl Unit {
    fn absorb(&mut self, other: &Unit) {
        self.entries.extend(other.entries.iter().copied());
        self.blobs.extend(other.blobs.iter().map(|(d, s)| (d.clone(), *s)));
    }
}

/// Write `layout` as `file`, `file.part2`, ... each at most `max` bytes where possible.
/// Returns the files written and warnings (an image larger than `max` gets a part alone).
pub(crate) async fn pack_parts(
    layout: &OciLayout,
    file: &Path,
    max: u64,
) -> Result<(Vec<PathBuf>, Vec<String>), MirrorError> {
    let entries = raw_entries(layout).await?;
    let units = units(layout, &entries).await?;
    let entry_len: Vec<u64> = entries.iter().map(|e| e.to_string().len() as u64 + 1).collect();
    let size = |u: &Unit| archive_size(u, &entry_len);

    let mut warnings = Vec::new();
    let mut parts: Vec<Unit> = Vec::new();
    let mut current = Unit::default();
    for unit in units {
        let alone = size(&unit);
        if alone > max {
            warnings.push(format!(
                "{} is {alone} bytes, more than --max-archive-size {max}: it gets a part of its own",
                describe(&unit, &entries)
            ));
            if !current.entries.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            parts.push(unit);
            continue;
        }
        let mut merged = current.clone();
        merged.absorb(&unit);
        if !current.entries.is_empty() && size(&merged) > max {
            parts.push(std::mem::replace(&mut current, unit));
        } else {
            current = merged;
        }
    }
    if !current.entries.is_empty() || parts.is_empty() {
        parts.push(current);
    }

    let count = parts.len();
    let mut files = Vec::with_capacity(count);
    for (i, part) in parts.iter().enumerate() {
        let mut index = json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": part.entries.iter().map(|&e| entries[e].clone()).collect::<Vec<_>>(),
        });
        if count > 1 {
            index["annotations"] =
                json!({ PART_ANNOTATION: (i + 1).to_string(), PARTS_ANNOTATION: count.to_string() });
        }
        let bytes = serde_json::to_vec(&index).expect("JSON serialises");
        let blobs = part.blobs.keys().map(blob_rel_path).collect();
        let out = part_path(file, i + 1);
        pack_selection(layout.root(), bytes, blobs, &out).await?;
        files.push(out);
    }
    Ok((files, warnings))
}

fn blob_rel_path(d: &Digest) -> PathBuf {
    Path::new("blobs").join(d.algorithm().as_str()).join(d.hex())
}

/// The tar size of a part holding `u` (an estimate from above for `index.json`).
fn archive_size(u: &Unit, entry_len: &[u64]) -> u64 {
    let index_len = 256 + u.entries.iter().map(|&e| entry_len[e]).sum::<u64>();
    let mut total = tar_entry("oci-layout".len(), 64) + tar_entry("index.json".len(), index_len);
    for (d, size) in &u.blobs {
        total += tar_entry(blob_rel_path(d).as_os_str().len(), *size);
    }
    total + 2 * TAR_BLOCK
}

/// Bytes a file takes in a tar: header, content padded to 512, and a GNU long-name entry
/// when the name does not fit the header's 100 bytes.
fn tar_entry(name_len: usize, size: u64) -> u64 {
    let pad = |n: u64| n.div_ceil(TAR_BLOCK) * TAR_BLOCK;
    let long_name = if name_len > 100 { TAR_BLOCK + pad(name_len as u64 + 1) } else { 0 };
    long_name + TAR_BLOCK + pad(size)
}

fn describe(u: &Unit, entries: &[Value]) -> String {
    let names: Vec<String> = u
        .entries
        .iter()
        .filter_map(|&e| entries[e]["annotations"][REF_NAME].as_str().map(str::to_owned))
        .filter(|n| !is_cosign_name(n))
        .collect();
    match names.as_slice() {
        [] => "an image".to_owned(),
        [one] => format!("image {one}"),
        many => format!("images {}", many.join(", ")),
    }
}

fn is_cosign_name(n: &str) -> bool {
    COSIGN_SUFFIXES.iter().any(|s| n.ends_with(&format!(".{s}"))) && n.starts_with("sha")
}

async fn raw_entries(layout: &OciLayout) -> Result<Vec<Value>, MirrorError> {
    let path = layout.root().join("index.json");
    let bytes =
        tokio::fs::read(&path).await.map_err(MirrorError::io(format!("reading {}", path.display())))?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| MirrorError::Invalid(format!("{} is not valid JSON: {e}", path.display())))?;
    Ok(v["manifests"].as_array().cloned().unwrap_or_default())
}

/// Group `index.json` entries into units: each entry that is not a referrer, with everything
/// it reaches (present children, blobs) and the referrer entries of what it reaches (by
/// `subject`, or cosign's `sha256-<hex>.sig|.att|.sbom` names). Referrers whose subject no
/// unit reaches form units of their own.
async fn units(layout: &OciLayout, raw: &[Value]) -> Result<Vec<Unit>, MirrorError> {
    let mut descs = Vec::with_capacity(raw.len());
    for e in raw {
        let d: Descriptor = serde_json::from_value(e.clone()).map_err(|err| {
            MirrorError::Invalid(format!("{}/index.json has a bad entry: {err}", layout.root().display()))
        })?;
        descs.push(d);
    }
    // Referrer entries by the manifest they refer to.
    let mut referrers: HashMap<Digest, Vec<usize>> = HashMap::new();
    let names: HashMap<String, usize> = descs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| d.annotations.as_ref()?.get(REF_NAME).map(|n| (n.clone(), i)))
        .collect();
    for (i, d) in descs.iter().enumerate() {
        if let Some(m) = read(layout, &d.digest, &d.media_type).await?
            && let Some(subject) = &m.subject
        {
            referrers.entry(subject.digest.clone()).or_default().push(i);
        }
    }
    let attached_to = |digest: &Digest| -> Vec<usize> {
        let mut out = referrers.get(digest).cloned().unwrap_or_default();
        for s in COSIGN_SUFFIXES {
            if let Some(&i) = names.get(&digest.cosign_tag(s)) {
                out.push(i);
            }
        }
        out
    };
    let is_attached = |i: usize| -> bool {
        let d = &descs[i];
        referrers.values().any(|v| v.contains(&i))
            || d.annotations.as_ref().and_then(|a| a.get(REF_NAME)).is_some_and(|n| is_cosign_name(n))
    };

    let mut units = Vec::new();
    let mut reached: BTreeSet<usize> = BTreeSet::new();
    for i in (0..descs.len()).filter(|&i| !is_attached(i)) {
        let unit = closure(layout, &descs, i, &attached_to).await?;
        reached.extend(unit.entries.iter().copied());
        units.push(unit);
    }
    for i in 0..descs.len() {
        if !reached.contains(&i) {
            let unit = closure(layout, &descs, i, &attached_to).await?;
            reached.extend(unit.entries.iter().copied());
            units.push(unit);
        }
    }
    Ok(units)
}

/// Entry `start` and everything it reaches.
async fn closure(
    layout: &OciLayout,
    descs: &[Descriptor],
    start: usize,
    attached_to: &impl Fn(&Digest) -> Vec<usize>,
) -> Result<Unit, MirrorError> {
    let mut unit = Unit::default();
    let mut entries = vec![start];
    while let Some(e) = entries.pop() {
        if !unit.entries.insert(e) {
            continue;
        }
        // (digest, media type, may be absent): children of an index may be (a sparse index).
        let mut stack = vec![(descs[e].digest.clone(), descs[e].media_type.clone(), false)];
        while let Some((digest, media_type, optional)) = stack.pop() {
            if unit.blobs.contains_key(&digest) {
                continue;
            }
            let Some(size) = layout.blob_size(&digest).await? else {
                if optional {
                    continue;
                }
                return Err(MirrorError::Invalid(format!(
                    "OCI layout {} lacks {digest}, which an image in it needs",
                    layout.root().display()
                )));
            };
            unit.blobs.insert(digest.clone(), size);
            entries.extend(attached_to(&digest));
            let Some(m) = read(layout, &digest, &media_type).await? else { continue };
            for child in m.children() {
                stack.push((child.digest.clone(), child.media_type.clone(), true));
            }
            for blob in m.blobs() {
                let foreign = media_types::is_foreign_layer(&blob.media_type) && blob.urls.is_some();
                let size = layout.blob_size(&blob.digest).await?;
                match size {
                    Some(size) => {
                        unit.blobs.insert(blob.digest.clone(), size);
                    }
                    None if foreign => {}
                    None => {
                        return Err(MirrorError::Invalid(format!(
                            "OCI layout {} lacks blob {} of manifest {digest}",
                            layout.root().display(),
                            blob.digest
                        )));
                    }
                }
            }
        }
    }
    Ok(unit)
}

/// The manifest at `digest` when `media_type` says it is one and the layout holds it.
async fn read(
    layout: &OciLayout,
    digest: &Digest,
    media_type: &str,
) -> Result<Option<Manifest>, MirrorError> {
    if !media_types::is_manifest(media_type) {
        return Ok(None);
    }
    let Some(bytes) = layout.read_manifest(digest).await? else { return Ok(None) };
    Ok(Manifest::parse(Some(media_type), &bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_sizes() {
        assert_eq!(tar_entry(10, 0), 512);
        assert_eq!(tar_entry(10, 1), 1024);
        assert_eq!(tar_entry(77, 512), 1024);
        assert_eq!(tar_entry(141, 1), 512 + 512 + 1024);
    }
}
