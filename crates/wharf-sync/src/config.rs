//! The sync file (TOML): defaults, then one `[[images]]` entry per source repository.

use std::path::Path;
use std::sync::Arc;

use wharf_trust::PublicKey;

use wharf_mirror::ImageRef;
use wharf_oci::{Digest, Platform};

use crate::SyncError;
use crate::naming::{Destination, Rule};

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub images: Vec<ImageSpec>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Platforms to copy from each index; empty or absent: all.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// A prefix: the source repository path is appended (`docker://HOST/mirror` +
    /// `team/app`), or an `oci:`/`oci-archive:` bundle that receives every image.
    pub dest: Option<String>,
    pub src_tls_verify: Option<bool>,
    pub dest_tls_verify: Option<bool>,
    /// Directories of extra CA certificates (`*.crt`), like skopeo's `--src-cert-dir`.
    pub src_cert_dir: Option<std::path::PathBuf>,
    pub dest_cert_dir: Option<std::path::PathBuf>,
    /// `USER:PASSWORD`; else the auth files docker and podman use.
    pub src_creds: Option<String>,
    pub dest_creds: Option<String>,
    /// Images copied at the same time.
    pub jobs: Option<usize>,
    /// Blobs moved at the same time within one image.
    pub blob_jobs: Option<usize>,
    #[serde(default)]
    pub no_referrers: bool,
    /// A public key (PEM, cosign.pub): copy only images whose index and selected platforms
    /// carry a cosign signature that verifies with it, checked at the source before writing.
    pub verify_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// `docker://HOST/REPO` (a repository, without tag), or `oci:`/`oci-archive:`.
    pub source: String,
    pub tags: Option<Vec<String>>,
    pub tags_regex: Option<String>,
    pub tags_semver: Option<String>,
    pub tags_latest: Option<usize>,
    pub digests: Option<Vec<String>>,
    pub platforms: Option<Vec<String>>,
    pub dest: Option<String>,
    /// Overrides `defaults.verify_key` for this entry.
    pub verify_key: Option<std::path::PathBuf>,
}

impl ImageSpec {
    /// `source` as an image reference, which must name a repository (or a layout) only: tags
    /// come from the selectors.
    pub fn source_ref(&self) -> Result<ImageRef, SyncError> {
        let r: ImageRef = self.source.parse()?;
        if r.name().is_some() || r.digest().is_some() {
            return Err(SyncError::Config(format!(
                "source {} names an image; name the repository and choose tags with tags, tags_regex, \
                 tags_semver, tags_latest or digests",
                self.source
            )));
        }
        Ok(r)
    }

    /// The destination rule for this entry: its own `dest` (a repository), else the defaults'
    /// prefix.
    pub fn destination(&self, defaults: &Defaults) -> Result<(Destination, Rule), SyncError> {
        match (&self.dest, &defaults.dest) {
            (Some(d), _) => Ok((d.parse()?, Rule::Repository)),
            (None, Some(d)) => Ok((d.parse()?, Rule::Prefix)),
            (None, None) => Err(SyncError::Config(format!("{}: no dest and no defaults.dest", self.source))),
        }
    }
}

/// Read the public key of a `verify_key` setting, naming the file on failure.
pub fn load_verify_key(path: &Path) -> Result<Arc<Vec<PublicKey>>, SyncError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SyncError::Config(format!("verify_key {}: {e}", path.display())))?;
    let key = PublicKey::from_pem(&text)
        .map_err(|e| SyncError::Config(format!("verify_key {}: {e}", path.display())))?;
    Ok(Arc::new(vec![key]))
}

impl SyncConfig {
    pub fn load(path: &Path) -> Result<SyncConfig, SyncError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SyncError::Config(format!("reading {}: {e}", path.display())))?;
        let config: SyncConfig =
            toml::from_str(&text).map_err(|e| SyncError::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Check everything that can be checked without the network, naming the entry.
    pub fn validate(&self) -> Result<(), SyncError> {
        parse_platforms(&self.defaults.platforms).map_err(|e| SyncError::Config(format!("defaults: {e}")))?;
        if self.images.is_empty() {
            return Err(SyncError::Config("no [[images]] entries: nothing to sync".into()));
        }
        if let Some(d) = &self.defaults.dest {
            d.parse::<Destination>().map_err(|e| SyncError::Config(format!("defaults.dest: {e}")))?;
        }
        if let Some(k) = &self.defaults.verify_key {
            load_verify_key(k).map_err(|e| SyncError::Config(format!("defaults: {e}")))?;
        }
        if self.defaults.jobs == Some(0) || self.defaults.blob_jobs == Some(0) {
            return Err(SyncError::Config("defaults: jobs and blob_jobs must be at least 1".into()));
        }
        for (i, img) in self.images.iter().enumerate() {
            let at = |e: String| SyncError::Config(format!("images[{i}] ({}): {e}", img.source));
            if img.dest.is_none() && self.defaults.dest.is_none() {
                return Err(at("no dest here and no defaults.dest prefix".into()));
            }
            let source = img.source_ref().map_err(|e| at(e.to_string()))?;
            if let Some(d) = &img.dest {
                d.parse::<Destination>().map_err(|e| at(e.to_string()))?;
            }
            if img.digests.is_some() && !source.is_registry() {
                return Err(at("digests = [...] selects images of a docker:// source only".into()));
            }
            let selectors = [
                img.tags.is_some(),
                img.tags_regex.is_some(),
                img.tags_semver.is_some(),
                img.tags_latest.is_some(),
                img.digests.is_some(),
            ];
            if !selectors.iter().any(|s| *s) {
                return Err(at(
                    "say which tags: tags, tags_regex, tags_semver, tags_latest or digests".into()
                ));
            }
            if let Some(k) = &img.verify_key {
                load_verify_key(k).map_err(|e| at(e.to_string()))?;
            }
            if let Some(p) = &img.platforms {
                parse_platforms(p).map_err(at)?;
            }
            if let Some(r) = &img.tags_regex {
                regex::Regex::new(r).map_err(|e| at(format!("tags_regex: {e}")))?;
            }
            if let Some(s) = &img.tags_semver {
                crate::select::parse_semver_range(s).map_err(at)?;
            }
            for d in img.digests.iter().flatten() {
                d.parse::<Digest>().map_err(|e| at(e.to_string()))?;
            }
        }
        Ok(())
    }
}

pub fn parse_platforms(list: &[String]) -> Result<Vec<Platform>, String> {
    list.iter().map(|p| p.parse::<Platform>().map_err(|e| e.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_design_example() {
        let c: SyncConfig = toml::from_str(
            r#"
            [defaults]
            platforms = ["linux/amd64", "linux/arm64"]
            dest = "docker://127.0.0.1:5000/mirror"

            [[images]]
            source = "docker://registry.example.com/team/app"
            tags = ["v1", "v2"]
            platforms = ["linux/amd64"]
            dest = "docker://127.0.0.1:5000/other/app"

            [[images]]
            source = "docker://registry.example.com/team/db"
            tags_semver = ">=1.2, <2"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.images.len(), 2);
    }

    #[test]
    fn names_the_broken_entry() {
        let c: SyncConfig = toml::from_str(
            r#"
            [defaults]
            dest = "docker://h/m"
            [[images]]
            source = "docker://h/a"
            tags_regex = "("
            "#,
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("images[0]") && e.contains("tags_regex"), "{e}");
        let c: SyncConfig = toml::from_str("[[images]]\nsource = \"docker://h/a\"\ntags=[\"v1\"]").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("no dest"));
        assert!(toml::from_str::<SyncConfig>("[[images]]\nsorce = \"x\"").is_err());
        for (body, want) in [
            ("source = \"docker://h.io/a:v1\"\ntags=[\"v1\"]", "names an image"),
            ("source = \"docker://h.io/a\"\ntags=[\"v1\"]\ndest = \"ftp://x\"", "use docker://"),
            ("source = \"oci:/x\"\ndigests=[]", "docker:// source only"),
        ] {
            let c: SyncConfig =
                toml::from_str(&format!("[defaults]\ndest = \"docker://h.io/m\"\n[[images]]\n{body}"))
                    .unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
