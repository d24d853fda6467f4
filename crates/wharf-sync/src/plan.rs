//! From the config to a list of copies: list each source's tags (or a layout's names), select,
//! and name the destinations. An entry that cannot be planned becomes a failed row; the
//! others go on.

use std::collections::HashMap;

use futures_util::StreamExt;
use wharf_mirror::{Copier, ImageRef, RefName};
use wharf_oci::{Digest, Platform, Reference, Tag};

use crate::SyncError;
use crate::config::{ImageSpec, SyncConfig, parse_platforms};
use crate::naming::{Destination, Rule};
use crate::report::ImageRow;
use crate::select::select_tags;

/// One copy to run.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub source: ImageRef,
    pub destination: ImageRef,
    /// The tag (or digest) selected, for the report.
    pub tag: String,
    pub platforms: Vec<Platform>,
    /// Keys the source's signatures must verify with (`verify_key`), checked before writing.
    pub verify_keys: Option<std::sync::Arc<Vec<wharf_trust::PublicKey>>>,
}

pub(crate) enum Planned {
    Copy(Task),
    Failed(ImageRow),
}

/// One entry's copies and a warning (nothing selected), or the row of its failure.
type EntryPlan = Result<(Vec<Planned>, Option<String>), ImageRow>;

/// Plan every entry (`jobs` at a time), in config order. Returns the plan and warnings.
pub(crate) async fn plan(copier: &Copier, config: &SyncConfig, jobs: usize) -> (Vec<Planned>, Vec<String>) {
    let results: Vec<EntryPlan> =
        futures_util::stream::iter(config.images.iter().map(|spec| plan_entry(copier, config, spec)))
            .buffered(jobs)
            .collect()
            .await;
    let mut planned = Vec::new();
    let mut warnings = Vec::new();
    for r in results {
        match r {
            Ok((p, warning)) => {
                planned.extend(p);
                warnings.extend(warning);
            }
            Err(row) => planned.push(Planned::Failed(row)),
        }
    }
    (refuse_collisions(planned), warnings)
}

/// Two images bound for one destination name would overwrite each other, in whatever order
/// they finish: the first in config order goes, the later ones fail, naming it.
fn refuse_collisions(planned: Vec<Planned>) -> Vec<Planned> {
    let mut taken: HashMap<String, String> = HashMap::new();
    planned
        .into_iter()
        .map(|p| match p {
            Planned::Copy(t) => {
                let dest = t.destination.to_string();
                match taken.get(&dest) {
                    Some(first) if *first != t.source.to_string() => {
                        let why = format!(
                            "{first} goes to {dest} too: two images cannot have one destination name"
                        );
                        Planned::Failed(ImageRow::failed(t.source.to_string(), t.tag, dest, why))
                    }
                    _ => {
                        taken.insert(dest, t.source.to_string());
                        Planned::Copy(t)
                    }
                }
            }
            failed => failed,
        })
        .collect()
}

async fn plan_entry(copier: &Copier, config: &SyncConfig, spec: &ImageSpec) -> EntryPlan {
    let fail = |e: SyncError| {
        let dest = spec.dest.clone().or_else(|| config.defaults.dest.clone()).unwrap_or_default();
        ImageRow::failed(spec.source.clone(), String::new(), dest, e.to_string())
    };
    let source = spec.source_ref().map_err(fail)?;
    let (dest, rule) = spec.destination(&config.defaults).map_err(fail)?;
    let platforms = parse_platforms(spec.platforms.as_ref().unwrap_or(&config.defaults.platforms))
        .map_err(|e| fail(SyncError::Config(e)))?;
    let verify_keys = match spec.verify_key.as_ref().or(config.defaults.verify_key.as_ref()) {
        Some(path) => Some(crate::config::load_verify_key(path).map_err(fail)?),
        None => None,
    };
    // Explicit tags and digests of a registry need no listing (hundreds of entries: fewer
    // requests); a missing one fails its copy, by name.
    let listed = spec.tags_regex.is_some() || spec.tags_semver.is_some() || spec.tags_latest.is_some();
    let available = if listed || !source.is_registry() {
        copier.source_tags(&source).await.map_err(|e| fail(e.into()))?
    } else {
        Vec::new()
    };
    let images = match &source {
        ImageRef::Docker { .. } => registry_images(&source, spec, &available),
        ImageRef::Oci { .. } | ImageRef::OciArchive { .. } => layout_images(&source, spec, &available),
    }
    .map_err(fail)?;
    let warning = (images.is_empty()).then(|| format!("{}: no tag matches the selection", spec.source));
    let planned = images
        .into_iter()
        .map(|img| {
            let to = destination_of(&dest, rule, img.repo.as_deref(), &img.reference);
            match to {
                Ok(destination) => Planned::Copy(Task {
                    source: img.source,
                    destination,
                    tag: img.reference.to_string(),
                    platforms: platforms.clone(),
                    verify_keys: verify_keys.clone(),
                }),
                Err(e) => Planned::Failed(ImageRow::failed(
                    img.source.to_string(),
                    img.reference.to_string(),
                    dest.to_string(),
                    e.to_string(),
                )),
            }
        })
        .collect();
    Ok((planned, warning))
}

/// A selected source image: where to read it, and the repository path and reference its
/// destination is named from.
struct SourceImage {
    source: ImageRef,
    repo: Option<String>,
    reference: Reference,
}

fn registry_images(
    source: &ImageRef,
    spec: &ImageSpec,
    available: &[String],
) -> Result<Vec<SourceImage>, SyncError> {
    let ImageRef::Docker { host, repo, .. } = source else { return Ok(Vec::new()) };
    let at = |tag: Option<Tag>, digest: Option<Digest>| ImageRef::Docker {
        host: host.clone(),
        repo: repo.clone(),
        tag,
        digest,
    };
    let mut out = Vec::new();
    for t in select_tags(spec, available).map_err(SyncError::Config)? {
        let tag: Tag = t.parse().map_err(|e| SyncError::Config(format!("tag {t:?}: {e}")))?;
        out.push(SourceImage {
            source: at(Some(tag.clone()), None),
            repo: Some(repo.to_string()),
            reference: Reference::Tag(tag),
        });
    }
    for d in spec.digests.iter().flatten() {
        let digest: Digest = d.parse().map_err(|e| SyncError::Config(format!("{d}: {e}")))?;
        out.push(SourceImage {
            source: at(None, Some(digest.clone())),
            repo: Some(repo.to_string()),
            reference: Reference::Digest(digest),
        });
    }
    Ok(out)
}

/// A layout's names are plain tags (`v1`) or bundle names (`team/app:v1`); selectors apply
/// to the tag part, and a bundle name gives the repository path.
fn layout_images(
    source: &ImageRef,
    spec: &ImageSpec,
    names: &[String],
) -> Result<Vec<SourceImage>, SyncError> {
    let (ImageRef::Oci { path, .. } | ImageRef::OciArchive { path, .. }) = source else {
        return Ok(Vec::new());
    };
    let with_name = |n: RefName| match source {
        ImageRef::OciArchive { .. } => ImageRef::OciArchive { path: path.clone(), name: Some(n) },
        _ => ImageRef::Oci { path: path.clone(), name: Some(n) },
    };
    let split: Vec<(RefName, Option<String>, Tag)> = names
        .iter()
        .filter_map(|n| {
            let name: RefName = n.parse().ok()?;
            match name.split_repository() {
                Some((repo, Reference::Tag(t))) => Some((name, Some(repo.to_string()), t)),
                Some((_, Reference::Digest(_))) => None,
                None => n.parse::<Tag>().ok().map(|t| (name, None, t)),
            }
        })
        .collect();
    let mut tags: Vec<String> = split.iter().map(|(_, _, t)| t.to_string()).collect();
    tags.sort();
    tags.dedup();
    let mut out = Vec::new();
    for t in select_tags(spec, &tags).map_err(SyncError::Config)? {
        let matching: Vec<&(RefName, Option<String>, Tag)> =
            split.iter().filter(|(_, _, tag)| tag.as_str() == t).collect();
        if matching.is_empty() {
            // An explicit tag the layout does not hold: its copy fails, naming it.
            let name: RefName = t.parse()?;
            let tag: Tag = t.parse().map_err(|e| SyncError::Config(format!("tag {t:?}: {e}")))?;
            out.push(SourceImage { source: with_name(name), repo: None, reference: Reference::Tag(tag) });
        }
        for (name, repo, tag) in matching {
            out.push(SourceImage {
                source: with_name(name.clone()),
                repo: repo.clone(),
                reference: Reference::Tag(tag.clone()),
            });
        }
    }
    Ok(out)
}

fn destination_of(
    dest: &Destination,
    rule: Rule,
    repo: Option<&str>,
    reference: &Reference,
) -> Result<ImageRef, SyncError> {
    let names_repository = match dest {
        Destination::Registry { path, .. } => path.is_some(),
        Destination::Bundle { name, .. } => name.is_some(),
    };
    match repo {
        Some(r) => dest.image_ref(r, reference, rule),
        None if rule == Rule::Repository && names_repository => dest.image_ref("", reference, rule),
        None => Err(SyncError::Config(format!(
            "the source name {reference} has no repository part (REPO:TAG): give this entry a dest that names the repository"
        ))),
    }
}
