//! `oci-archive:` files: a tar of an OCI image layout. Reading extracts into a temporary
//! layout; writing fills a temporary layout (seeded with the existing archive) and tars it to
//! the file atomically (temporary file beside it, fsync, rename).
//!
//! A bundle split with `--max-archive-size` is `FILE`, `FILE.part2`, `FILE.part3`, ...: each
//! part a complete archive of its own.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::MirrorError;

/// Part `n` (from 1) of a split archive: `FILE` itself, then `FILE.part2`, ...
pub fn part_path(file: &Path, n: usize) -> PathBuf {
    if n <= 1 {
        return file.to_owned();
    }
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".part{n}"));
    PathBuf::from(name)
}

/// The parts of the archive `file` on disk: `file` (given as the first part, or any part
/// `FILE.partN`) and then `FILE.part2`, `FILE.part3`, ... as long as they exist.
pub fn archive_parts(file: &Path) -> Vec<PathBuf> {
    let first = first_part(file);
    let mut parts = vec![first.clone()];
    for n in 2.. {
        let p = part_path(&first, n);
        if !p.exists() {
            break;
        }
        parts.push(p);
    }
    parts
}

/// `FILE` for `FILE.partN` (when `FILE` exists); else the path itself.
fn first_part(file: &Path) -> PathBuf {
    let s = file.to_string_lossy();
    if let Some((base, n)) = s.rsplit_once(".part")
        && n.parse::<usize>().is_ok_and(|n| n >= 2)
        && Path::new(base).exists()
    {
        return PathBuf::from(base);
    }
    file.to_owned()
}

/// Remove `FILE.partN` for every N past `kept` parts (left from an earlier, larger split).
pub(crate) async fn remove_stale_parts(file: &Path, kept: usize) -> Result<(), MirrorError> {
    for n in (kept + 1).max(2).. {
        let p = part_path(file, n);
        match tokio::fs::remove_file(&p).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(MirrorError::io(format!("removing {}", p.display()))(e)),
        }
    }
    Ok(())
}

/// Extract `archive` and its parts (`FILE.part2`, ...) into `into`, as one layout: blobs
/// together, `index.json` entries merged.
pub(crate) async fn extract_with_parts(archive: &Path, into: &Path) -> Result<(), MirrorError> {
    extract(archive, into).await?;
    let parts = archive_parts(archive);
    if parts.len() == 1 {
        let to = into.to_owned();
        return blocking(format!("reading OCI archive {}", archive.display()), move || {
            rewrite_index(&to, |_| {})
        })
        .await;
    }
    for part in parts.into_iter().skip(1) {
        let staging = tempfile::Builder::new()
            .prefix(".part-")
            .tempdir_in(into)
            .map_err(MirrorError::io(format!("extracting {}", part.display())))?;
        extract(&part, staging.path()).await?;
        let (from, to) = (staging.path().to_owned(), into.to_owned());
        let ctx = format!("merging {} into one layout", part.display());
        blocking(ctx, move || merge_layout(&from, &to)).await?;
    }
    Ok(())
}

/// Move the blobs of layout `from` into `to` and add its `index.json` entries to `to`'s.
fn merge_layout(from: &Path, to: &Path) -> std::io::Result<()> {
    let blobs = from.join("blobs");
    for alg in sorted_names(&blobs)? {
        std::fs::create_dir_all(to.join("blobs").join(&alg))?;
        for name in sorted_names(&blobs.join(&alg))? {
            let target = to.join("blobs").join(&alg).join(&name);
            if !target.exists() {
                std::fs::rename(blobs.join(&alg).join(&name), target)?;
            }
        }
    }
    let extra = read_index(from)?;
    rewrite_index(to, |list| {
        for e in extra["manifests"].as_array().into_iter().flatten() {
            let same = |x: &Value| x["digest"] == e["digest"] && x["annotations"] == e["annotations"];
            if !list.iter().any(same) {
                list.push(e.clone());
            }
        }
    })
}

fn read_index(layout: &Path) -> std::io::Result<Value> {
    serde_json::from_slice(&std::fs::read(layout.join("index.json"))?).map_err(std::io::Error::other)
}

/// Edit the entries of `layout/index.json`, dropping the part numbers of a split bundle: they
/// describe the parts as they were, and the extracted layout is one whole.
fn rewrite_index(layout: &Path, edit: impl FnOnce(&mut Vec<Value>)) -> std::io::Result<()> {
    let mut index = read_index(layout)?;
    let mut list = index["manifests"].as_array().cloned().unwrap_or_default();
    edit(&mut list);
    index["manifests"] = Value::Array(list);
    if let Some(a) = index.get_mut("annotations").and_then(Value::as_object_mut) {
        a.retain(|k, _| !k.starts_with(crate::split::PART_ANNOTATION_PREFIX));
        if a.is_empty() {
            index.as_object_mut().map(|o| o.remove("annotations"));
        }
    }
    let bytes = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
    std::fs::write(layout.join("index.json"), bytes)
}

/// Extract `archive` into the (empty) directory `into`.
pub(crate) async fn extract(archive: &Path, into: &Path) -> Result<(), MirrorError> {
    let layout_file = into.join("oci-layout");
    let (archive, into) = (archive.to_owned(), into.to_owned());
    let ctx = format!("reading OCI archive {}", archive.display());
    blocking(ctx.clone(), move || {
        let file = File::open(&archive)?;
        let mut tar = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
        tar.set_preserve_permissions(false);
        // `unpack` refuses entries that would land outside `into` (`..`, absolute links).
        tar.unpack(&into)
    })
    .await?;
    if tokio::fs::metadata(layout_file).await.is_err() {
        return Err(MirrorError::Invalid(format!("{ctx}: it holds no oci-layout file (not an OCI archive)")));
    }
    Ok(())
}

/// Tar the layout at `layout` into `archive`, replacing it atomically.
pub(crate) async fn pack(layout: &Path, archive: &Path) -> Result<(), MirrorError> {
    let (layout, archive) = (layout.to_owned(), archive.to_owned());
    let ctx = format!("writing OCI archive {}", archive.display());
    blocking(ctx, move || {
        write_tar(&archive, |tar| {
            for name in ["oci-layout", "index.json"] {
                tar.append_path_with_name(layout.join(name), name)?;
            }
            let blobs = layout.join("blobs");
            let mut algorithms = sorted_names(&blobs)?;
            algorithms.retain(|a| !a.starts_with('.'));
            for alg in algorithms {
                let mut names = sorted_names(&blobs.join(&alg))?;
                // Temporary files of an interrupted write are not content.
                names.retain(|n| !n.starts_with('.'));
                for name in names {
                    let rel = Path::new("blobs").join(&alg).join(&name);
                    tar.append_path_with_name(layout.join(&rel), &rel)?;
                }
            }
            Ok(())
        })
    })
    .await
}

/// Tar a selection of the layout at `layout` into `archive` (replacing it atomically):
/// `oci-layout`, the given `index.json` bytes, and the blobs at the given relative paths.
pub(crate) async fn pack_selection(
    layout: &Path,
    index_json: Vec<u8>,
    blobs: Vec<PathBuf>,
    archive: &Path,
) -> Result<(), MirrorError> {
    let (layout, archive) = (layout.to_owned(), archive.to_owned());
    let ctx = format!("writing OCI archive {}", archive.display());
    blocking(ctx, move || {
        write_tar(&archive, |tar| {
            tar.append_path_with_name(layout.join("oci-layout"), "oci-layout")?;
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(index_json.len() as u64);
            tar.append_data(&mut header, "index.json", index_json.as_slice())?;
            for rel in &blobs {
                tar.append_path_with_name(layout.join(rel), rel)?;
            }
            Ok(())
        })
    })
    .await
}

/// Write a tar through `fill` to a temporary file beside `archive`, fsync, rename.
fn write_tar(
    archive: &Path,
    fill: impl FnOnce(&mut tar::Builder<std::io::BufWriter<tempfile::NamedTempFile>>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let parent = match archive.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::Builder::new().prefix(".tmp-oci-archive-").tempfile_in(&parent)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, tmp));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    fill(&mut tar)?;
    let mut out = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    out.flush()?;
    // A bundle is meant to be read by others (temporary files start as 0600).
    {
        use std::os::unix::fs::PermissionsExt as _;
        out.as_file().set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    out.as_file().sync_all()?;
    out.persist(archive).map_err(|e| e.error)?;
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn sorted_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

async fn blocking<F>(context: String, f: F) -> Result<(), MirrorError>
where
    F: FnOnce() -> std::io::Result<()> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(MirrorError::io(context)),
        Err(e) => Err(MirrorError::Invalid(format!("{context}: task failed: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("oci-layout"), b"{}").unwrap();
        std::fs::write(layout.join("index.json"), b"{\"manifests\":[]}").unwrap();
        std::fs::write(layout.join("blobs/sha256/abc"), b"blob").unwrap();
        std::fs::write(layout.join("blobs/sha256/.tmp-x"), b"partial").unwrap();
        let file = dir.path().join("a.tar");
        pack(&layout, &file).await.unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        extract(&file, &out).await.unwrap();
        assert_eq!(std::fs::read(out.join("blobs/sha256/abc")).unwrap(), b"blob");
        assert!(!out.join("blobs/sha256/.tmp-x").exists());
        // Parts: FILE, FILE.part2, ... found from any of them; merged on extraction.
        let part2 = part_path(&file, 2);
        let other = dir.path().join("other");
        std::fs::create_dir_all(other.join("blobs/sha256")).unwrap();
        std::fs::write(other.join("oci-layout"), b"{}").unwrap();
        std::fs::write(other.join("index.json"), br#"{"manifests":[{"digest":"sha256:def"}]}"#).unwrap();
        std::fs::write(other.join("blobs/sha256/def"), b"blob2").unwrap();
        pack(&other, &part2).await.unwrap();
        assert_eq!(archive_parts(&file), vec![file.clone(), part2.clone()]);
        assert_eq!(archive_parts(&part2), vec![file.clone(), part2.clone()]);
        let merged = dir.path().join("merged");
        std::fs::create_dir_all(&merged).unwrap();
        extract_with_parts(&file, &merged).await.unwrap();
        assert_eq!(std::fs::read(merged.join("blobs/sha256/def")).unwrap(), b"blob2");
        let index: Value =
            serde_json::from_slice(&std::fs::read(merged.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        remove_stale_parts(&file, 1).await.unwrap();
        assert!(!part2.exists());

        let not_archive = dir.path().join("b.tar");
        std::fs::write(&not_archive, b"").unwrap();
        assert!(extract(&not_archive, &dir.path().join("out2")).await.is_err());
    }
}
