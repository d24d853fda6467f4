//! Which tags of a source repository a `[[images]]` entry selects.

use regex::Regex;
use semver::{Version, VersionReq};

use crate::config::ImageSpec;

/// A semver range such as `>=1.2, <2`.
pub fn parse_semver_range(s: &str) -> Result<VersionReq, String> {
    VersionReq::parse(s).map_err(|e| format!("tags_semver {s:?}: {e}"))
}

/// A tag as a semantic version, accepting a leading `v` (`v1.2.0`); `None` otherwise.
pub fn tag_version(tag: &str) -> Option<Version> {
    Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// Apply the entry's selectors to the source's tags. Selectors add up (a tag chosen by any
/// is synced); the result is sorted and without repeats. Explicit `tags` are kept even when
/// the source does not list them, so that a missing one is reported rather than skipped.
pub fn select_tags(spec: &ImageSpec, available: &[String]) -> Result<Vec<String>, String> {
    let mut chosen: Vec<String> = spec.tags.clone().unwrap_or_default();
    if let Some(r) = &spec.tags_regex {
        let re = Regex::new(r).map_err(|e| format!("tags_regex: {e}"))?;
        chosen.extend(available.iter().filter(|t| re.is_match(t)).cloned());
    }
    if let Some(s) = &spec.tags_semver {
        let req = parse_semver_range(s)?;
        chosen.extend(available.iter().filter(|t| tag_version(t).is_some_and(|v| req.matches(&v))).cloned());
    }
    if let Some(n) = spec.tags_latest {
        // "Newest" by semantic version: registries do not report when a tag was pushed.
        let mut versioned: Vec<(Version, &String)> =
            available.iter().filter_map(|t| tag_version(t).map(|v| (v, t))).collect();
        versioned.sort_by(|a, b| b.0.cmp(&a.0));
        chosen.extend(versioned.into_iter().take(n).map(|(_, t)| t.clone()));
    }
    chosen.sort();
    chosen.dedup();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> Vec<String> {
        ["v1.0.0", "v1.1.0", "v1.2.0", "v2.0.0", "latest", "1.3.0-rc.1", "nightly", "1.2.5"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn semver_range_ignores_non_semver_and_accepts_v() {
        let spec = ImageSpec { tags_semver: Some(">=1.1, <2".into()), ..Default::default() };
        assert_eq!(select_tags(&spec, &tags()).unwrap(), vec!["1.2.5", "v1.1.0", "v1.2.0"]);
    }

    #[test]
    fn latest_n_by_version() {
        let spec = ImageSpec { tags_latest: Some(2), ..Default::default() };
        assert_eq!(select_tags(&spec, &tags()).unwrap(), vec!["1.3.0-rc.1", "v2.0.0"]);
    }

    #[test]
    fn regex_and_list_add_up() {
        let spec = ImageSpec {
            tags: Some(vec!["latest".into(), "missing".into()]),
            tags_regex: Some(r"^v1\.[01]\.".into()),
            ..Default::default()
        };
        assert_eq!(select_tags(&spec, &tags()).unwrap(), vec!["latest", "missing", "v1.0.0", "v1.1.0"]);
    }
}
