//! `oci-archive:` files: a tar of an OCI image layout. Reading extracts into a temporary
//! layout; writing fills a temporary layout (seeded with the existing archive) and tars it to
//! the file atomically (temporary file beside it, fsync, rename).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::MirrorError;

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
        let parent = match archive.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new().prefix(".tmp-oci-archive-").tempfile_in(&parent)?;
        let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, tmp));
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
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
        let mut out = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
        out.flush()?;
        out.as_file().sync_all()?;
        out.persist(&archive).map_err(|e| e.error)?;
        if let Ok(d) = File::open(&parent) {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
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
        let not_archive = dir.path().join("b.tar");
        std::fs::write(&not_archive, b"").unwrap();
        assert!(extract(&not_archive, &dir.path().join("out2")).await.is_err());
    }
}
