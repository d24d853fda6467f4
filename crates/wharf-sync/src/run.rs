//! Running a plan: images in parallel (bounded), over one shared [`Copier`] so that its ledger
//! moves each blob at most once per destination (later repositories mount it). A failed image
//! never stops the others.

use std::sync::Arc;

use futures_util::StreamExt;
use wharf_client::{ClientOptions, Credentials};
use wharf_mirror::{Copier, CopyOptions, Progress};

use crate::SyncError;
use crate::config::{Defaults, SyncConfig};
use crate::plan::{Planned, Task, plan};
use crate::report::{ImageRow, SyncReport};

/// How to run, besides the config file.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Plan only: resolve tags, ask the destinations what they hold, add up sizes; write
    /// nothing.
    pub dry_run: bool,
    /// Split an `oci-archive:` destination into parts of at most this many bytes.
    pub max_archive_size: Option<u64>,
    /// Look credentials up in auth.json / docker config for hosts without `*_creds`.
    pub lookup_credentials: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions { dry_run: false, max_archive_size: None, lookup_credentials: true }
    }
}

pub(crate) const DEFAULT_JOBS: usize = 4;

/// Mirror every image the config selects. Failures of single images are in the report (see
/// [`SyncReport::is_success`]); an `Err` means the run could not start (a bad config).
pub async fn sync(
    config: &SyncConfig,
    opts: &SyncOptions,
    progress: Arc<dyn Progress>,
) -> Result<SyncReport, SyncError> {
    config.validate()?;
    let copier = Copier::new(copy_options(&config.defaults, opts)?, progress);
    let jobs = config.defaults.jobs.unwrap_or(DEFAULT_JOBS).max(1);
    let (planned, warnings) = plan(&copier, config, jobs).await;
    let mut report = execute(&copier, planned, jobs, opts.dry_run).await;
    report.warnings.splice(0..0, warnings);
    Ok(report)
}

/// [`sync`] of several configs, one after the other (skopeo's YAML gives one per source
/// registry, each with its own credentials), in one report.
pub async fn sync_all(
    configs: &[SyncConfig],
    opts: &SyncOptions,
    progress: Arc<dyn Progress>,
) -> Result<SyncReport, SyncError> {
    for c in configs {
        c.validate()?;
    }
    let mut all = SyncReport { dry_run: opts.dry_run, ..Default::default() };
    for c in configs {
        all.merge(sync(c, opts, progress.clone()).await?);
    }
    Ok(all)
}

/// The engine's options from the config's defaults (per-image platforms are given per copy).
pub(crate) fn copy_options(d: &Defaults, opts: &SyncOptions) -> Result<CopyOptions, SyncError> {
    let creds = |what: &str, v: &Option<String>| {
        v.as_deref()
            .map(Credentials::parse_user_pass)
            .transpose()
            .map_err(|e| SyncError::Config(format!("defaults.{what}: {e}")))
    };
    Ok(CopyOptions {
        no_referrers: d.no_referrers,
        jobs: d.blob_jobs.unwrap_or(DEFAULT_JOBS).max(1),
        src_client: ClientOptions {
            tls_verify: d.src_tls_verify.unwrap_or(true),
            credentials: creds("src_creds", &d.src_creds)?,
            cert_dir: d.src_cert_dir.clone(),
            ..Default::default()
        },
        dest_client: ClientOptions {
            tls_verify: d.dest_tls_verify.unwrap_or(true),
            credentials: creds("dest_creds", &d.dest_creds)?,
            cert_dir: d.dest_cert_dir.clone(),
            ..Default::default()
        },
        lookup_credentials: opts.lookup_credentials,
        dry_run: opts.dry_run,
        max_archive_size: opts.max_archive_size,
        ..Default::default()
    })
}

/// Run the copies `jobs` at a time, then write the bundles; rows keep the plan's order.
pub(crate) async fn execute(
    copier: &Copier,
    planned: Vec<Planned>,
    jobs: usize,
    dry_run: bool,
) -> SyncReport {
    let mut rows: Vec<Option<ImageRow>> = Vec::with_capacity(planned.len());
    let mut tasks: Vec<(usize, Task)> = Vec::new();
    for p in planned {
        match p {
            Planned::Copy(t) => {
                tasks.push((rows.len(), t));
                rows.push(None);
            }
            Planned::Failed(row) => rows.push(Some(row)),
        }
    }
    let mut report = SyncReport { dry_run, ..Default::default() };
    let done: Vec<(usize, ImageRow, Vec<String>)> =
        futures_util::stream::iter(tasks.into_iter().map(|(i, t)| async move {
            let keys = t.verify_keys.as_deref().map(Vec::as_slice);
            let copied = match keys {
                Some(k) => copier.copy_verified(&t.source, &t.destination, &t.platforms, Some(k)).await,
                None => copier.copy_platforms(&t.source, &t.destination, &t.platforms).await,
            };
            match copied {
                Ok(r) => (i, ImageRow::from_copy(t.tag, &r, dry_run), r.warnings),
                Err(e) => {
                    let row = ImageRow::failed(
                        t.source.to_string(),
                        t.tag,
                        t.destination.to_string(),
                        e.to_string(),
                    );
                    (i, row, Vec::new())
                }
            }
        }))
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    for (i, row, warnings) in done {
        rows[i] = Some(row);
        report.warnings.extend(warnings);
    }
    for row in rows.into_iter().flatten() {
        report.add(row);
    }
    match copier.finish().await {
        Ok(f) => {
            report.archives = f.archives;
            report.warnings.extend(f.warnings);
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    report
}
