//! Layouts and archives a run reads or writes, opened once per run; destination archives are
//! written once, at the end ([`Copier::finish`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::copier::Role;
use crate::layout::OciLayout;
use crate::{Copier, FinishReport, MirrorError, archive, split};

/// A layout the run reads or writes; for an archive, the temporary layout behind it.
pub(crate) struct LayoutHandle {
    pub layout: Arc<OciLayout>,
    /// For a destination archive: the file to write the layout back to.
    archive: Option<PathBuf>,
    _tmp: Option<tempfile::TempDir>,
}

fn temp_dir() -> Result<tempfile::TempDir, MirrorError> {
    tempfile::Builder::new()
        .prefix("wharf-oci-archive-")
        .tempdir()
        .map_err(MirrorError::io("creating a temporary directory"))
}

impl Copier {
    /// Open (once per run) the layout at `path`, or the temporary layout of the archive there.
    pub(crate) async fn layout(
        &self,
        path: &Path,
        role: Role,
        is_archive: bool,
    ) -> Result<Arc<LayoutHandle>, MirrorError> {
        let abs =
            std::path::absolute(path).map_err(MirrorError::io(format!("resolving {}", path.display())))?;
        let mut layouts = self.layouts.lock().await;
        if let Some(h) = layouts.get(&(abs.clone(), role)) {
            return Ok(h.clone());
        }
        let handle = match (is_archive, role) {
            (true, Role::Source) => {
                if tokio::fs::metadata(&abs).await.is_err() {
                    return Err(MirrorError::NotFound(format!(
                        "OCI archive {} does not exist",
                        abs.display()
                    )));
                }
                let tmp = temp_dir()?;
                archive::extract(&abs, tmp.path()).await?;
                let layout = OciLayout::open(tmp.path()).await?;
                LayoutHandle { layout: Arc::new(layout), archive: None, _tmp: Some(tmp) }
            }
            (true, Role::Destination) => {
                let tmp = temp_dir()?;
                // An archive that exists (with its parts) is added to, not replaced; reading it
                // also lets a run see what is there already.
                if tokio::fs::metadata(&abs).await.is_ok() {
                    archive::extract_with_parts(&abs, tmp.path()).await?;
                }
                let layout = OciLayout::create(tmp.path()).await?;
                LayoutHandle { layout: Arc::new(layout), archive: Some(abs.clone()), _tmp: Some(tmp) }
            }
            (false, Role::Source) => {
                LayoutHandle { layout: Arc::new(OciLayout::open(&abs).await?), archive: None, _tmp: None }
            }
            (false, Role::Destination) if self.opts.dry_run => {
                // A plan reads what is there and writes nothing: a missing layout is an empty
                // one, in a temporary directory.
                if tokio::fs::metadata(abs.join("oci-layout")).await.is_ok() {
                    LayoutHandle { layout: Arc::new(OciLayout::open(&abs).await?), archive: None, _tmp: None }
                } else {
                    let tmp = temp_dir()?;
                    let layout = OciLayout::create(tmp.path()).await?;
                    LayoutHandle { layout: Arc::new(layout), archive: None, _tmp: Some(tmp) }
                }
            }
            (false, Role::Destination) => {
                LayoutHandle { layout: Arc::new(OciLayout::create(&abs).await?), archive: None, _tmp: None }
            }
        };
        let handle = Arc::new(handle);
        layouts.insert((abs, role), handle.clone());
        Ok(handle)
    }

    /// Write every destination archive the run changed, once (split into parts with
    /// `max_archive_size`). Nothing in a dry run.
    pub async fn finish(&self) -> Result<FinishReport, MirrorError> {
        let mut report = FinishReport::default();
        if self.opts.dry_run {
            return Ok(report);
        }
        let handles: Vec<Arc<LayoutHandle>> = self.layouts.lock().await.values().cloned().collect();
        for h in handles {
            let Some(file) = &h.archive else { continue };
            if !h.layout.take_changed() {
                continue;
            }
            self.progress.message(&format!("writing {}", file.display()));
            let written = match self.opts.max_archive_size {
                None => archive::pack(h.layout.root(), file).await.map(|()| (vec![file.clone()], Vec::new())),
                Some(max) => split::pack_parts(&h.layout, file, max).await,
            };
            let (files, warnings) = match written {
                Ok(w) => w,
                Err(e) => {
                    h.layout.mark_changed();
                    return Err(e);
                }
            };
            archive::remove_stale_parts(file, files.len()).await?;
            for w in &warnings {
                self.progress.message(&format!("warning: {w}"));
            }
            report.archives.extend(files);
            report.warnings.extend(warnings);
        }
        Ok(report)
    }
}
