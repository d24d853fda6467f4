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
    let path = layout.join("index.json");
    let bytes = std::fs::read(&path)?;
    // Checked like any layout's: the indexing below would panic on a non-object.
    crate::layout::parse_index(&path, &bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Edit the entries of `layout/index.json`, dropping the part numbers of a split bundle: they
/// describe the parts as they were, and the extracted layout is one whole.
pub(crate) fn rewrite_index(layout: &Path, edit: impl FnOnce(&mut Vec<Value>)) -> std::io::Result<()> {
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
        unpack_checked(std::io::BufReader::with_capacity(1 << 20, file), &into)
    })
    .await?;
    if tokio::fs::metadata(layout_file).await.is_err() {
        return Err(MirrorError::Invalid(format!("{ctx}: it holds no oci-layout file (not an OCI archive)")));
    }
    Ok(())
}

fn refused(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("entry {:?} {why}", path.display().to_string()),
    )
}

/// Unpack a tar into the empty directory `into`, refusing (rather than skipping or trusting)
/// anything an OCI layout never holds: an archive comes from elsewhere. Only regular files and
/// directories, at relative paths without `..`, each file once, each fully present. A file is
/// created with `create_new` under directories this function made, so nothing lands outside
/// `into` and nothing is written through a link.
pub(crate) fn unpack_checked(reader: impl std::io::Read, into: &Path) -> std::io::Result<()> {
    use std::path::Component;
    use tar::EntryType;

    let mut tar = tar::Archive::new(reader);
    let mut seen = std::collections::HashSet::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(part) => rel.push(part),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(refused(&path, "leaves the archive's directory (`..` or an absolute path)"));
                }
            }
        }
        let kind = entry.header().entry_type();
        match kind {
            // Extended headers that `tar` did not fold into the next entry carry no content.
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Directory => {
                if !rel.as_os_str().is_empty() {
                    std::fs::create_dir_all(into.join(&rel))?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                if rel.as_os_str().is_empty() {
                    return Err(refused(&path, "is a file without a name"));
                }
                if !seen.insert(rel.clone()) {
                    return Err(refused(&path, "appears twice: the archive is ambiguous"));
                }
                let target = into.join(&rel);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&target)?;
                let expected = entry.size();
                let written = std::io::copy(&mut entry, &mut out)?;
                if written != expected {
                    return Err(refused(
                        &path,
                        &format!("is cut short ({written} of {expected} bytes): the archive is truncated"),
                    ));
                }
            }
            EntryType::Symlink | EntryType::Link => {
                return Err(refused(&path, "is a link: an OCI archive holds only files and directories"));
            }
            other => {
                return Err(refused(
                    &path,
                    &format!("has type {other:?}: an OCI archive holds only files and directories"),
                ));
            }
        }
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

    use wharf_testkit::raw_tar_entry as entry;

    fn layout_tar(extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut t = Vec::new();
        entry(&mut t, "oci-layout", tar::EntryType::Regular, b"{}", None);
        entry(&mut t, "index.json", tar::EntryType::Regular, br#"{"manifests":[]}"#, None);
        extra(&mut t);
        t.extend_from_slice(&[0; 1024]);
        t
    }

    /// Unpacks `tar` into `root/into`; returns the error, and checks nothing else was made.
    fn refused(tar: &[u8]) -> String {
        let root = tempfile::tempdir().unwrap();
        let into = root.path().join("into");
        std::fs::create_dir(&into).unwrap();
        let err = unpack_checked(tar, &into).expect_err("a hostile archive must be refused").to_string();
        let names: Vec<_> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["into"], "something was written beside the target");
        err
    }

    #[test]
    fn hostile_archives_are_refused() {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let ok = layout_tar(|t| {
            entry(t, "./blobs/", Directory, b"", None);
            entry(t, "blobs/sha256/ab", Regular, b"blob", None);
        });
        let dir = tempfile::tempdir().unwrap();
        unpack_checked(ok.as_slice(), dir.path()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("blobs/sha256/ab")).unwrap(), b"blob");

        let e = refused(&layout_tar(|t| entry(t, "../escaped", Regular, b"x", None)));
        assert!(e.contains("leaves the archive's directory"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "blobs/../../escaped", Regular, b"x", None)));
        assert!(e.contains("leaves the archive's directory"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "/tmp/escaped", Regular, b"x", None)));
        assert!(e.contains("absolute path"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "blobs", Symlink, b"", Some("/etc"))));
        assert!(e.contains("is a link"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "blobs/sha256/ab", Link, b"", Some("../../etc/passwd"))));
        assert!(e.contains("is a link"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "dev", tar::EntryType::Char, b"", None)));
        assert!(e.contains("only files and directories"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "index.json", Regular, b"{}", None)));
        assert!(e.contains("appears twice"), "{e}");
        let e = refused(&layout_tar(|t| entry(t, "./oci-layout", Regular, b"{}", None)));
        assert!(e.contains("appears twice"), "{e}");
        // Cut inside an entry's content.
        let mut cut = layout_tar(|t| entry(t, "blobs/sha256/ab", Regular, &[7; 2000], None));
        cut.truncate(512 * 3 + 512 + 700);
        let e = refused(&cut);
        assert!(e.contains("truncated") || e.contains("failed to fill") || e.contains("unexpected"), "{e}");
        // Cut inside a header.
        let mut cut = layout_tar(|t| entry(t, "blobs/sha256/ab", Regular, b"x", None));
        cut.truncate(512 * 4 + 100);
        refused(&cut);
    }

    #[test]
    fn index_json_that_is_not_an_object_is_an_error() {
        // `index["manifests"] = ..` panics on a JSON array: a hostile bundle must not get there.
        for text in ["[]", "1", "\"x\"", "{\"manifests\":3}"] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("index.json"), text).unwrap();
            let e = rewrite_index(dir.path(), |_| {}).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{text}: {e}");
        }
    }

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
