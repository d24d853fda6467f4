//! `wharf serve` configuration: a TOML file, overridden by flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wharf_oci::Platform;
use wharf_registry::{IndexPolicy, IndexRule, RegistryConfig, RepoPattern};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    #[serde(default)]
    pub index_policy: PolicyFile,
    /// URL prefixes that foreign (non-distributable) layers may point at.
    #[serde(default)]
    pub foreign_layer_urls: Vec<String>,
    /// Abandoned uploads are removed after this many hours (default 24).
    pub upload_expiry_hours: Option<u64>,
    /// Upstreams that fill absent manifests and blobs on demand.
    #[serde(default)]
    pub upstreams: Vec<crate::upstream::UpstreamFile>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub default: Option<String>,
    #[serde(default)]
    pub repositories: Vec<RepoRuleFile>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoRuleFile {
    pub pattern: String,
    pub policy: Option<String>,
    pub require: Option<Vec<String>>,
}

impl ServerFile {
    pub fn load(path: &Path) -> anyhow::Result<ServerFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

pub fn parse_rule(policy: Option<&str>, require: Option<&[String]>) -> anyhow::Result<IndexRule> {
    if let Some(require) = require {
        if policy == Some("complete") {
            bail!(
                "`require` lists platforms that may be the only ones present; it cannot go with policy = \"complete\""
            );
        }
        let platforms = require
            .iter()
            .map(|p| p.parse::<Platform>().map_err(anyhow::Error::from))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(IndexRule::Require(platforms));
    }
    match policy {
        None | Some("complete") => Ok(IndexRule::Complete),
        Some("sparse") => Ok(IndexRule::Sparse),
        Some(other) => {
            bail!("index policy {other:?} is unknown: use \"complete\" or \"sparse\", or a `require` list")
        }
    }
}

/// Build the registry settings from the file and the `--index-policy` flag.
pub fn registry_config(file: &ServerFile, default_policy: Option<&str>) -> anyhow::Result<RegistryConfig> {
    let default = parse_rule(default_policy.or(file.index_policy.default.as_deref()), None)
        .context("index_policy.default")?;
    let mut repositories = Vec::new();
    for (i, r) in file.index_policy.repositories.iter().enumerate() {
        let rule = parse_rule(r.policy.as_deref(), r.require.as_deref())
            .with_context(|| format!("index_policy.repositories[{i}] (pattern {:?})", r.pattern))?;
        repositories.push((RepoPattern::new(&r.pattern), rule));
    }
    Ok(RegistryConfig {
        index_policy: IndexPolicy { default, repositories },
        foreign_layer_urls: file.foreign_layer_urls.clone(),
        upstreams: crate::upstream::upstream_rules(&file.upstreams)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_design_example() {
        let file: ServerFile = toml::from_str(
            r#"
            addr = "127.0.0.1:5000"
            data_dir = "./wharf-data"
            [index_policy]
            default = "complete"
            [[index_policy.repositories]]
            pattern = "mirror/**"
            policy = "sparse"
            [[index_policy.repositories]]
            pattern = "prod/**"
            require = ["linux/amd64", "linux/arm64"]
            "#,
        )
        .unwrap();
        let cfg = registry_config(&file, None).unwrap();
        let p = &cfg.index_policy;
        assert_eq!(p.rule_for(&"mirror/x".parse().unwrap()), &IndexRule::Sparse);
        assert!(matches!(p.rule_for(&"prod/x".parse().unwrap()), IndexRule::Require(v) if v.len() == 2));
        assert_eq!(p.rule_for(&"other".parse().unwrap()), &IndexRule::Complete);
        let overridden = registry_config(&file, Some("sparse")).unwrap();
        assert_eq!(overridden.index_policy.default, IndexRule::Sparse);
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_rule(Some("partial"), None).is_err());
        assert!(parse_rule(Some("complete"), Some(&["linux/amd64".into()])).is_err());
        assert!(parse_rule(None, Some(&["linux".into()])).is_err());
        assert!(toml::from_str::<ServerFile>("adr = \"x\"").is_err());
    }
}
