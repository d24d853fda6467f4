//! Destination naming: where an image of a source repository goes.
//!
//! `[defaults] dest` is a prefix: the source repository path is appended
//! (`docker://HOST/mirror` + `team/app` gives `docker://HOST/mirror/team/app:TAG`). An
//! image's own `dest` is the repository itself (the tag is appended). A bundle (`oci:DIR`,
//! `oci-archive:FILE`) receives every image under the name `<repository path>:<tag>`, after an
//! optional name prefix (`oci:DIR:NAME`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use wharf_mirror::{ImageRef, RefName};
use wharf_oci::{Reference, RepoName};

use crate::SyncError;

/// A parsed `dest` (or `--to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `docker://HOST[/PATH]`.
    Registry { host: String, path: Option<String> },
    /// `oci:DIR[:NAME]` or `oci-archive:FILE[:NAME]`.
    Bundle { archive: bool, path: PathBuf, name: Option<String> },
}

/// How a destination's path is used with a source repository path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `[defaults] dest`: the source repository path is appended.
    Prefix,
    /// An image's `dest`: the repository itself (the source path when it names none).
    Repository,
}

impl Destination {
    pub fn is_bundle(&self) -> bool {
        matches!(self, Destination::Bundle { .. })
    }

    /// Where the image `source_repo` at `reference` (a tag or digest) goes.
    pub fn image_ref(
        &self,
        source_repo: &str,
        reference: &Reference,
        rule: Rule,
    ) -> Result<ImageRef, SyncError> {
        let (base, kind) = match self {
            Destination::Registry { path, .. } => (path.as_deref(), "repository"),
            Destination::Bundle { name, .. } => (name.as_deref(), "name"),
        };
        let repo = match (rule, base) {
            (Rule::Prefix, Some(prefix)) => format!("{prefix}/{source_repo}"),
            (Rule::Repository, Some(repo)) => repo.to_owned(),
            (_, None) => source_repo.to_owned(),
        };
        let repo: RepoName = repo.parse().map_err(|e| {
            SyncError::Invalid(format!("destination {kind} {repo:?} for {source_repo} in {self}: {e}"))
        })?;
        Ok(match self {
            Destination::Registry { host, .. } => {
                let (tag, digest) = match reference {
                    Reference::Tag(t) => (Some(t.clone()), None),
                    Reference::Digest(d) => (None, Some(d.clone())),
                };
                ImageRef::Docker { host: host.clone(), repo, tag, digest }
            }
            Destination::Bundle { archive, path, .. } => {
                let name = RefName::for_repository(&repo, reference).map_err(SyncError::Mirror)?;
                let path = path.clone();
                if *archive {
                    ImageRef::OciArchive { path, name: Some(name) }
                } else {
                    ImageRef::Oci { path, name: Some(name) }
                }
            }
        })
    }
}

impl FromStr for Destination {
    type Err = SyncError;

    fn from_str(s: &str) -> Result<Self, SyncError> {
        let bad = |why: &str| SyncError::Invalid(format!("destination {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("docker://") {
            if rest.contains('@') {
                return Err(bad("name a registry or repository, not a digest"));
            }
            let rest = rest.trim_end_matches('/');
            // A bare host is a registry; else docker's rule: the first component is a host if
            // it has a '.' or ':' or is localhost.
            let (host, path) = match rest.split_once('/') {
                None => (rest.to_owned(), None),
                Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => {
                    (h.to_owned(), Some(p.to_owned()))
                }
                Some(_) => ("docker.io".to_owned(), Some(rest.to_owned())),
            };
            if host.is_empty() {
                return Err(bad("it names no registry"));
            }
            if let Some(p) = &path {
                if p.rsplit('/').next().is_some_and(|last| last.contains(':')) {
                    return Err(bad("name a repository without a tag: tags come from the source"));
                }
                p.parse::<RepoName>().map_err(|e| bad(&e.to_string()))?;
            }
            return Ok(Destination::Registry { host, path });
        }
        let (archive, rest) = match (s.strip_prefix("oci-archive:"), s.strip_prefix("oci:")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(bad("use docker://HOST[/PATH], oci:DIR[:NAME] or oci-archive:FILE[:NAME]")),
        };
        // The path ends at the first colon, as with skopeo.
        let (path, name) = match rest.split_once(':') {
            Some((p, n)) if !n.is_empty() => (p, Some(n.to_owned())),
            Some((p, _)) => (p, None),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(bad("the path is empty"));
        }
        if let Some(n) = &name {
            n.parse::<RepoName>().map_err(|e| bad(&format!("the name prefix: {e}")))?;
        }
        Ok(Destination::Bundle { archive, path: PathBuf::from(path), name })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Registry { host, path: Some(p) } => write!(f, "docker://{host}/{p}"),
            Destination::Registry { host, path: None } => write!(f, "docker://{host}"),
            Destination::Bundle { archive, path, name } => {
                write!(f, "{}:{}", if *archive { "oci-archive" } else { "oci" }, path.display())?;
                if let Some(n) = name {
                    write!(f, ":{n}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(t: &str) -> Reference {
        Reference::Tag(t.parse().unwrap())
    }

    fn dest(d: &str, repo: &str, t: &str, rule: Rule) -> String {
        d.parse::<Destination>().unwrap().image_ref(repo, &tag(t), rule).unwrap().to_string()
    }

    #[test]
    fn prefix_and_repository_rules() {
        assert_eq!(
            dest("docker://127.0.0.1:5000/mirror", "team/app", "v1", Rule::Prefix),
            "docker://127.0.0.1:5000/mirror/team/app:v1"
        );
        assert_eq!(
            dest("docker://127.0.0.1:5000", "team/app", "v1", Rule::Prefix),
            "docker://127.0.0.1:5000/team/app:v1"
        );
        assert_eq!(
            dest("docker://127.0.0.1:5000/other/app", "team/app", "v1", Rule::Repository),
            "docker://127.0.0.1:5000/other/app:v1"
        );
        assert_eq!(
            dest("oci-archive:/tmp/b.tar", "team/app", "v1.2.0", Rule::Prefix),
            "oci-archive:/tmp/b.tar:team/app:v1.2.0"
        );
        assert_eq!(dest("oci:/tmp/b:site", "team/app", "v1", Rule::Prefix), "oci:/tmp/b:site/team/app:v1");
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let by_digest = Reference::Digest(d.parse().unwrap());
        let r = "oci:/b".parse::<Destination>().unwrap().image_ref("a/b", &by_digest, Rule::Prefix).unwrap();
        assert_eq!(r.to_string(), format!("oci:/b:a/b@{d}"));
        let r = "docker://h.io/m"
            .parse::<Destination>()
            .unwrap()
            .image_ref("a/b", &by_digest, Rule::Prefix)
            .unwrap();
        assert_eq!(r.to_string(), format!("docker://h.io/m/a/b@{d}"));
    }

    #[test]
    fn refuses_unclear_destinations() {
        for (bad, why) in [
            ("docker://h.io/m:v1", "without a tag"),
            ("docker://h.io/m@sha256:ab", "digest"),
            ("docker://", "no registry"),
            ("dir:/x", "use docker://"),
            ("oci:", "path is empty"),
            ("docker://h.io/UP", "repository name"),
        ] {
            let e = bad.parse::<Destination>().unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
