//! A registry's own mirror (`[[mirrors]]` of `wharf serve`): one `[[images]]` entry with a name,
//! a schedule and its own source credentials, run by the same engine as `wharf sync` into a
//! repository of the registry itself.
//!
//! The registry pushes into itself through its own HTTP API (loopback), with the same client,
//! auth and index policy as any pushing client: nothing here knows the registry's insides, and
//! a mirror run is exactly a `wharf sync` run of a one-entry config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wharf_mirror::NoProgress;
use wharf_oci::RepoName;

use crate::SyncError;
use crate::config::{Defaults, ImageSpec, SyncConfig};
use crate::report::SyncReport;
use crate::run::{SyncOptions, sync};

/// One `[[mirrors]]` entry.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSpec {
    /// Names the mirror in the status API, `POST .../<name>/run`, metrics and logs:
    /// lower-case letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// `docker://HOST/REPO`, as `source` of `[[images]]`.
    pub source: String,
    pub tags: Option<Vec<String>>,
    pub tags_regex: Option<String>,
    pub tags_semver: Option<String>,
    pub tags_latest: Option<usize>,
    pub digests: Option<Vec<String>>,
    /// Platforms to copy; absent: all.
    pub platforms: Option<Vec<String>>,
    /// A repository of this registry (`mirror/team/app`); the tags are the source's.
    pub dest: String,
    /// `30m`, `6h`, `1h30m`, `90s`, `1d`: time from the end of one run to the start of the
    /// next (the first run is at start; `POST .../run` runs one sooner).
    pub interval: String,
    /// `USER:PASSWORD` for the source; absent: anonymous (the server reads no auth files).
    pub credentials: Option<String>,
    pub tls_verify: Option<bool>,
    /// Extra CA certificates (`*.crt`) for the source.
    pub cert_dir: Option<PathBuf>,
    /// A public key (PEM, cosign.pub): mirror only what verifies with it at the source.
    pub verify_key: Option<PathBuf>,
}

impl std::fmt::Debug for MirrorSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorSpec")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("tags", &self.tags)
            .field("tags_regex", &self.tags_regex)
            .field("tags_semver", &self.tags_semver)
            .field("tags_latest", &self.tags_latest)
            .field("digests", &self.digests)
            .field("platforms", &self.platforms)
            .field("dest", &self.dest)
            .field("interval", &self.interval)
            .field("credentials", &self.credentials.as_ref().map(|_| "<redacted>"))
            .field("tls_verify", &self.tls_verify)
            .field("cert_dir", &self.cert_dir)
            .field("verify_key", &self.verify_key)
            .finish()
    }
}

/// Where a run pushes: this registry, reached over loopback.
#[derive(Clone)]
pub struct LocalTarget {
    /// `127.0.0.1:5000`.
    pub host: String,
    /// The registry's internal login when it has `[auth]`.
    pub credentials: Option<(String, String)>,
    /// `false` when the registry serves HTTPS with a certificate made for its public name,
    /// not for the loopback address (the connection never leaves the machine).
    pub tls_verify: bool,
}

impl std::fmt::Debug for LocalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTarget")
            .field("host", &self.host)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| (u, "<redacted>")))
            .field("tls_verify", &self.tls_verify)
            .finish()
    }
}

impl MirrorSpec {
    /// Check everything that can be checked without the network; errors name the mirror.
    pub fn validate(&self) -> Result<(), SyncError> {
        let at = |e: String| SyncError::Config(format!("mirror {:?}: {e}", self.name));
        check_name(&self.name).map_err(at)?;
        self.dest_repo()?;
        self.interval()?;
        if let Some(c) = &self.credentials {
            wharf_client::Credentials::parse_user_pass(c).map_err(|e| at(format!("credentials: {e}")))?;
        }
        if !self.source.starts_with("docker://") {
            return Err(at(format!(
                "source {:?}: a mirror reads a registry: use docker://HOST/REPO",
                self.source
            )));
        }
        let placeholder = LocalTarget { host: "127.0.0.1:5000".into(), credentials: None, tls_verify: true };
        self.sync_config(&placeholder).validate().map_err(|e| match e {
            // "images[0] (source): why" -> "mirror "name": why"
            SyncError::Config(m) => at(m.split_once("): ").map_or(m.clone(), |(_, why)| why.to_owned())),
            other => other,
        })
    }

    /// `dest` as a repository name.
    pub fn dest_repo(&self) -> Result<RepoName, SyncError> {
        self.dest.parse().map_err(|e| {
            SyncError::Config(format!(
                "mirror {:?}: dest {:?} must be a repository of this registry (like mirror/team/app): {e}",
                self.name, self.dest
            ))
        })
    }

    /// The time between runs.
    pub fn interval(&self) -> Result<Duration, SyncError> {
        parse_interval(&self.interval)
            .map_err(|e| SyncError::Config(format!("mirror {:?}: interval: {e}", self.name)))
    }

    /// The one-entry sync config of a run into `target`.
    pub fn sync_config(&self, target: &LocalTarget) -> SyncConfig {
        SyncConfig {
            defaults: Defaults {
                src_tls_verify: self.tls_verify,
                src_cert_dir: self.cert_dir.clone(),
                src_creds: self.credentials.clone(),
                dest_tls_verify: Some(target.tls_verify),
                dest_creds: target.credentials.as_ref().map(|(u, p)| format!("{u}:{p}")),
                ..Defaults::default()
            },
            images: vec![ImageSpec {
                source: self.source.clone(),
                tags: self.tags.clone(),
                tags_regex: self.tags_regex.clone(),
                tags_semver: self.tags_semver.clone(),
                tags_latest: self.tags_latest,
                digests: self.digests.clone(),
                platforms: self.platforms.clone(),
                dest: Some(format!("docker://{}/{}", target.host, self.dest)),
                verify_key: self.verify_key.clone(),
            }],
        }
    }
}

/// Run a mirror once: `wharf sync` of its one-entry config, into `target`. Failures of images
/// are in the report; `Err` only for a config that cannot run.
pub async fn run_mirror(spec: &MirrorSpec, target: &LocalTarget) -> Result<SyncReport, SyncError> {
    // Credentials come from the config only: a server does not read its user's auth files.
    let opts = SyncOptions { lookup_credentials: false, ..SyncOptions::default() };
    sync(&spec.sync_config(target), &opts, Arc::new(NoProgress)).await
}

/// Mirror names appear in URLs, metric labels and logs: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err("the name must be 1-128 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
            .into())
    }
}

/// `90s`, `30m`, `2h`, `1d`, `1h30m`, `0s`: a sum of numbers with units s, m, h, d; a bare
/// number is seconds. For every duration a config or flag takes (intervals, TTLs, grace periods).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("{s:?} is not a duration: write it like \"30s\", \"30m\", \"6h\", \"1h30m\" or \"1d\"");
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
        any = true;
    }
    if !any || !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A mirror's `interval`: a [`parse_duration`] of at least one second.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let total = parse_duration(s)?;
    if total.is_zero() {
        return Err(format!("{s:?} is zero: a mirror needs at least one second between runs"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<MirrorSpec, String> {
        toml::from_str::<MirrorSpec>(&format!(
            "name = \"vendor-app\"\nsource = \"docker://r.example/team/app\"\ndest = \"mirror/team/app\"\ninterval = \"30m\"\n{extra}"
        ))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_interval("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_interval("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_interval("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_interval("45").unwrap(), Duration::from_secs(45), "a bare number is seconds");
        for bad in ["", "m", "0s", "0", "1x", "-1m", "99999999999999999999d"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validates_and_maps_onto_one_sync_entry() {
        let s = spec("tags_semver = \">=1.2, <2\"\nplatforms = [\"linux/amd64\"]\ncredentials = \"u:p\"")
            .unwrap();
        s.validate().unwrap();
        assert!(!format!("{s:?}").contains("u:p"), "Debug shows no secret");
        assert_eq!(s.interval().unwrap(), Duration::from_secs(1800));
        let target = LocalTarget { host: "127.0.0.1:5000".into(), credentials: None, tls_verify: true };
        let c = s.sync_config(&target);
        c.validate().unwrap();
        assert_eq!(c.images[0].dest.as_deref(), Some("docker://127.0.0.1:5000/mirror/team/app"));
        assert_eq!(c.defaults.src_creds.as_deref(), Some("u:p"));

        let err = |extra: &str| spec(extra).unwrap().validate().unwrap_err().to_string();
        assert!(err("").contains("say which tags"), "{}", err(""));
        let mut soon = spec("tags = [\"v1\"]").unwrap();
        soon.interval = "soon".into();
        assert!(soon.validate().unwrap_err().to_string().contains("interval"));
        assert!(err("tags = [\"v1\"]\ncredentials = \"nocolon\"").contains("credentials"));
        assert!(err("tags = [\"v1\"]\nplatforms = [\"linux\"]").contains("vendor-app"));
        let mut bad = spec("tags = [\"v1\"]").unwrap();
        bad.dest = "Mirror/App".into();
        assert!(bad.validate().unwrap_err().to_string().contains("dest"));
        bad.dest = "mirror/app".into();
        bad.name = "Vendor App".into();
        assert!(bad.validate().unwrap_err().to_string().contains("name"));
        bad.name = "ok".into();
        bad.source = "oci:/x".into();
        assert!(bad.validate().unwrap_err().to_string().contains("docker://"));
        assert!(spec("tag = [\"v1\"]").is_err(), "unknown fields are refused");
        assert!(
            toml::from_str::<MirrorSpec>("name = \"a\"\nsource = \"docker://h/a\"\ndest = \"a\"").is_err(),
            "interval is required"
        );
    }
}
