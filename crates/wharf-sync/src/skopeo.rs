//! skopeo's sync YAML (`skopeo sync --src yaml --dest docker FILE HOST/PREFIX`), mapped onto
//! sync configs, so that a team switches with the file it has:
//!
//! ```yaml
//! registry.example.com:
//!   images:
//!     busybox: []                 # every tag
//!     redis: ["1.0", "2.0", "sha256:..."]
//!   images-by-tag-regex:
//!     nginx: ^1\.13\.[12]-alpine-perl$
//!   images-by-semver:
//!     app: ">= 1.2, < 2"
//!   credentials: { username: john, password: secret }
//!   tls-verify: true
//!   cert-dir: /home/john/certs
//! ```
//!
//! Destinations follow skopeo without `--scoped`: `HOST/PREFIX/<last path component>:<tag>`.
//! Credentials, `tls-verify` and `cert-dir` belong to one registry, so each registry becomes
//! one [`SyncConfig`] (run one after the other by [`crate::sync_all`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::SyncError;
use crate::config::{Defaults, ImageSpec, SyncConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryEntry {
    #[serde(default)]
    images: BTreeMap<String, Option<Vec<String>>>,
    #[serde(default, rename = "images-by-tag-regex")]
    images_by_tag_regex: BTreeMap<String, String>,
    #[serde(default, rename = "images-by-semver")]
    images_by_semver: BTreeMap<String, String>,
    credentials: Option<YamlCredentials>,
    #[serde(rename = "tls-verify")]
    tls_verify: Option<bool>,
    #[serde(rename = "cert-dir")]
    cert_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlCredentials {
    username: String,
    password: String,
}

impl std::fmt::Debug for YamlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YamlCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// Does `path` name a YAML file by its extension?
pub fn is_yaml_path(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Parse skopeo sync YAML into one config per registry, all bound for `dest`
/// (`docker://HOST[/PREFIX]`, or skopeo's `HOST[/PREFIX]`).
pub fn from_yaml(text: &str, dest: &str, platforms: &[String]) -> Result<Vec<SyncConfig>, SyncError> {
    let registries: BTreeMap<String, RegistryEntry> =
        serde_norway::from_str(text).map_err(|e| SyncError::Config(format!("skopeo sync YAML: {e}")))?;
    if registries.is_empty() {
        return Err(SyncError::Config("skopeo sync YAML: no registries: nothing to sync".into()));
    }
    let dest = dest.strip_prefix("docker://").unwrap_or(dest).trim_end_matches('/');
    let bundle = dest.starts_with("oci:") || dest.starts_with("oci-archive:");
    if dest.is_empty() || dest.contains("://") || bundle {
        return Err(SyncError::Config(format!(
            "--dest {dest:?}: skopeo sync YAML goes to a registry: docker://HOST[/PREFIX]"
        )));
    }
    let mut configs = Vec::new();
    for (registry, entry) in registries {
        let mut images = Vec::new();
        let spec = |repo: &str| ImageSpec {
            source: format!("docker://{registry}/{repo}"),
            // skopeo without --scoped: the last component of the source repository.
            dest: Some(format!("docker://{dest}/{}", repo.rsplit('/').next().unwrap_or(repo))),
            ..ImageSpec::default()
        };
        for (repo, refs) in &entry.images {
            let refs = refs.clone().unwrap_or_default();
            if refs.is_empty() {
                images.push(ImageSpec { tags_regex: Some("^.*$".into()), ..spec(repo) });
                continue;
            }
            let (digests, tags): (Vec<String>, Vec<String>) = refs.into_iter().partition(|r| r.contains(':'));
            if !tags.is_empty() {
                images.push(ImageSpec { tags: Some(tags), ..spec(repo) });
            }
            if !digests.is_empty() {
                images.push(ImageSpec { digests: Some(digests), ..spec(repo) });
            }
        }
        for (repo, regex) in &entry.images_by_tag_regex {
            images.push(ImageSpec { tags_regex: Some(regex.clone()), ..spec(repo) });
        }
        for (repo, range) in &entry.images_by_semver {
            images.push(ImageSpec { tags_semver: Some(range.clone()), ..spec(repo) });
        }
        if images.is_empty() {
            return Err(SyncError::Config(format!("skopeo sync YAML: {registry}: no images")));
        }
        let config = SyncConfig {
            defaults: Defaults {
                platforms: platforms.to_vec(),
                src_tls_verify: entry.tls_verify,
                src_cert_dir: entry.cert_dir.clone(),
                src_creds: entry.credentials.as_ref().map(|c| format!("{}:{}", c.username, c.password)),
                ..Defaults::default()
            },
            images,
        };
        config.validate().map_err(|e| SyncError::Config(format!("skopeo sync YAML: {registry}: {e}")))?;
        configs.push(config);
    }
    Ok(configs)
}

/// Load a sync file: Wharf's TOML, or skopeo's sync YAML (by extension `.yaml`/`.yml`, else
/// when the text is not TOML but is such YAML). `dest` is the destination skopeo takes on its
/// command line (required for YAML; for TOML it replaces `[defaults] dest`); `platforms`,
/// when not empty, replaces the default platforms.
pub fn load_configs(
    path: &Path,
    dest: Option<&str>,
    platforms: &[String],
) -> Result<Vec<SyncConfig>, SyncError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SyncError::Config(format!("reading {}: {e}", path.display())))?;
    let yaml = |text: &str| match dest {
        Some(d) => {
            from_yaml(text, d, platforms).map_err(|e| SyncError::Config(format!("{}: {e}", path.display())))
        }
        None => Err(SyncError::Config(format!(
            "{} is skopeo sync YAML: say where it goes with --dest docker://HOST[/PREFIX]",
            path.display()
        ))),
    };
    if is_yaml_path(path) {
        return yaml(&text);
    }
    let mut config: SyncConfig = match toml::from_str(&text) {
        Ok(c) => c,
        Err(toml_error) => {
            // Not TOML: skopeo's YAML under another name?
            if serde_norway::from_str::<BTreeMap<String, RegistryEntry>>(&text).is_ok() {
                return yaml(&text);
            }
            return Err(SyncError::Config(format!("{}: {toml_error}", path.display())));
        }
    };
    if let Some(d) = dest {
        config.defaults.dest = Some(d.to_owned());
    }
    if !platforms.is_empty() {
        config.defaults.platforms = platforms.to_vec();
    }
    config.validate()?;
    Ok(vec![config])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAN_PAGE_EXAMPLE: &str = r#"
registry.example.com:
    images:
        busybox: []
        redis:
            - "1.0"
            - "2.0"
            - "sha256:0000000000000000000000000000000011111111111111111111111111111111"
    images-by-tag-regex:
        nginx: ^1\.13\.[12]-alpine-perl$
    credentials:
        username: john
        password: this is a secret
    tls-verify: true
    cert-dir: /home/john/certs
quay.io:
    tls-verify: false
    images:
        coreos/etcd:
            - latest
"#;

    #[test]
    fn maps_the_man_page_example() {
        let configs = from_yaml(MAN_PAGE_EXAMPLE, "my-registry.local.lan/repo", &[]).unwrap();
        assert_eq!(configs.len(), 2);
        let quay = &configs[0];
        assert_eq!(quay.defaults.src_tls_verify, Some(false));
        assert_eq!(quay.images[0].source, "docker://quay.io/coreos/etcd");
        assert_eq!(quay.images[0].dest.as_deref(), Some("docker://my-registry.local.lan/repo/etcd"));
        assert_eq!(quay.images[0].tags.as_deref(), Some(&["latest".to_owned()][..]));
        let ex = &configs[1];
        assert_eq!(ex.defaults.src_creds.as_deref(), Some("john:this is a secret"));
        assert_eq!(ex.defaults.src_cert_dir.as_deref(), Some(Path::new("/home/john/certs")));
        let by_source = |s: &str| ex.images.iter().filter(|i| i.source.ends_with(s)).collect::<Vec<_>>();
        assert_eq!(by_source("/busybox")[0].tags_regex.as_deref(), Some("^.*$"));
        let redis = by_source("/redis");
        assert_eq!(redis.len(), 2, "tags and digests are two selections");
        assert_eq!(redis[0].tags.as_ref().unwrap().len(), 2);
        assert_eq!(redis[1].digests.as_ref().unwrap().len(), 1);
        assert!(by_source("/nginx")[0].tags_regex.is_some());
    }

    #[test]
    fn semver_ranges_as_skopeo_users_write_them() {
        let c =
            from_yaml("r.io:\n  images-by-semver:\n    team/app: \">= 1.2, < 2\"\n", "h.io/m", &[]).unwrap();
        assert_eq!(c[0].images[0].tags_semver.as_deref(), Some(">= 1.2, < 2"));
        assert_eq!(c[0].images[0].dest.as_deref(), Some("docker://h.io/m/app"));
        assert!(from_yaml("r.io:\n  images-by-semver:\n    a: \"1 || 2\"\n", "h.io/m", &[]).is_err());
    }

    #[test]
    fn refuses_what_skopeo_would_not_run() {
        assert!(from_yaml("r.io:\n  imags:\n    a: []\n", "h", &[]).is_err(), "typo");
        assert!(
            from_yaml("r.io:\n  tls-verify: true\n", "h", &[]).unwrap_err().to_string().contains("no images")
        );
        assert!(from_yaml("r.io:\n  images:\n    a: []\n", "oci:/x", &[]).is_err());
        assert!(from_yaml("{}", "h", &[]).is_err());
    }

    #[test]
    fn detects_yaml_by_extension_or_content() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["sync.yml", "sync.conf"] {
            let p = dir.path().join(name);
            std::fs::write(&p, MAN_PAGE_EXAMPLE).unwrap();
            let configs = load_configs(&p, Some("docker://h.io/m"), &["linux/amd64".into()]).unwrap();
            assert_eq!(configs.len(), 2, "{name}");
            assert_eq!(configs[0].defaults.platforms, ["linux/amd64"]);
            assert!(load_configs(&p, None, &[]).unwrap_err().to_string().contains("--dest"));
        }
        let p = dir.path().join("sync.toml");
        std::fs::write(&p, "[[images]]\nsource = \"docker://h.io/a\"\ntags = [\"v1\"]\n").unwrap();
        let configs = load_configs(&p, Some("docker://h.io/m"), &[]).unwrap();
        assert_eq!(configs[0].defaults.dest.as_deref(), Some("docker://h.io/m"));
    }
}
