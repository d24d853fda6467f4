//! Image references in skopeo's transport syntax:
//! `docker://HOST[:PORT]/REPO[:TAG][@DIGEST]`, `oci:PATH[:NAME]`, `oci-archive:FILE[:NAME]`,
//! where NAME is a layout ref name (which may itself hold `:`, as in `oci:DIR:team/app:v1`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use wharf_oci::{Digest, Reference, RepoName, Tag};

use crate::{ImageName, MirrorError, RefName};

/// Docker Hub's canonical name (`wharf_client::RegistryClient` knows the host its API
/// answers on).
pub const DOCKER_HUB: &str = "docker.io";

/// Where an image is, and which one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A repository in a registry. Without tag and digest the tag is `latest`.
    Docker { host: String, repo: RepoName, tag: Option<Tag>, digest: Option<Digest> },
    /// An OCI image layout directory; the name is the `org.opencontainers.image.ref.name`
    /// annotation of an `index.json` entry (`v1`, or in a bundle `team/app:v1`).
    Oci { path: PathBuf, name: Option<RefName> },
    /// A tar of an OCI image layout.
    OciArchive { path: PathBuf, name: Option<RefName> },
}

const TRANSPORTS: &str = "docker://HOST/REPO[:TAG|@DIGEST], oci:PATH[:NAME] or oci-archive:FILE[:NAME]";

impl ImageRef {
    /// For a registry image, the reference to read it by: its digest, else its tag, else
    /// `latest`. `None` for a layout (read by [`ImageRef::name`]).
    pub fn registry_reference(&self) -> Option<Reference> {
        match self {
            ImageRef::Docker { tag, digest, .. } => Some(match (digest, tag) {
                (Some(d), _) => Reference::Digest(d.clone()),
                (None, Some(t)) => Reference::Tag(t.clone()),
                (None, None) => Reference::Tag(latest()),
            }),
            ImageRef::Oci { .. } | ImageRef::OciArchive { .. } => None,
        }
    }

    /// The tag or layout name this reference gives, if any (not the implicit `latest`).
    pub fn name(&self) -> Option<ImageName> {
        match self {
            ImageRef::Docker { tag, .. } => tag.clone().map(ImageName::Tag),
            ImageRef::Oci { name, .. } | ImageRef::OciArchive { name, .. } => {
                name.clone().map(ImageName::Ref)
            }
        }
    }

    /// The name this reference names or implies when read: `latest` for a registry reference
    /// with neither tag nor digest.
    pub fn effective_name(&self) -> Option<ImageName> {
        match self {
            ImageRef::Docker { tag: None, digest: None, .. } => Some(ImageName::Tag(latest())),
            other => other.name(),
        }
    }

    /// The digest this reference pins, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageRef::Docker { digest, .. } => digest.as_ref(),
            ImageRef::Oci { .. } | ImageRef::OciArchive { .. } => None,
        }
    }

    pub fn is_registry(&self) -> bool {
        matches!(self, ImageRef::Docker { .. })
    }
}

fn latest() -> Tag {
    "latest".parse().expect("latest is a valid tag")
}

fn invalid(s: &str, why: impl fmt::Display) -> MirrorError {
    MirrorError::InvalidReference(format!("image reference {s:?} is invalid: {why}"))
}

impl FromStr for ImageRef {
    type Err = MirrorError;

    fn from_str(s: &str) -> Result<Self, MirrorError> {
        if let Some(rest) = s.strip_prefix("docker://") {
            return parse_docker(s, rest);
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (path, name) = parse_path_name(s, rest)?;
            return Ok(ImageRef::OciArchive { path, name });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, name) = parse_path_name(s, rest)?;
            return Ok(ImageRef::Oci { path, name });
        }
        match s.split_once(':') {
            Some((t, _)) if !t.contains('/') && !t.contains('.') && !t.is_empty() => {
                Err(invalid(s, format!("transport {t:?} is not supported; use {TRANSPORTS}")))
            }
            _ => Err(invalid(s, format!("it has no transport; use {TRANSPORTS} (e.g. docker://{s})"))),
        }
    }
}

/// `PATH[:NAME]`, split at the first `:` as skopeo (containers/image) does, so the name
/// may hold more colons: `oci:DIR:team/app:v1`.
fn parse_path_name(s: &str, rest: &str) -> Result<(PathBuf, Option<RefName>), MirrorError> {
    let (path, name) = match rest.split_once(':') {
        Some((p, n)) => (p, Some(n)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(s, "the path is empty"));
    }
    let name = match name {
        None | Some("") => None,
        Some(n) => Some(n.parse::<RefName>().map_err(|e| invalid(s, e))?),
    };
    Ok((PathBuf::from(path), name))
}

fn parse_docker(s: &str, rest: &str) -> Result<ImageRef, MirrorError> {
    let (name, digest) = match rest.split_once('@') {
        Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| invalid(s, e))?)),
        None => (rest, None),
    };
    // A tag is after the last ':' that follows the last '/' (a port's ':' comes before a '/').
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&name[..at], Some(name[at + 1..].parse::<Tag>().map_err(|e| invalid(s, e))?))
        }
        None => (name, None),
    };
    // Docker's rule: the first component is a host if it has a '.' or ':' or is localhost.
    let (host, path) = match name.split_once('/') {
        Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (h.to_owned(), p.to_owned()),
        _ if name.contains('/') => (DOCKER_HUB.to_owned(), name.to_owned()),
        _ => (DOCKER_HUB.to_owned(), format!("library/{name}")),
    };
    if name.is_empty() {
        return Err(invalid(s, "it names no repository"));
    }
    let repo = path.parse::<RepoName>().map_err(|e| invalid(s, e))?;
    Ok(ImageRef::Docker { host, repo, tag, digest })
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Docker { host, repo, tag, digest } => {
                write!(f, "docker://{host}/{repo}")?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
            ImageRef::Oci { path, name } | ImageRef::OciArchive { path, name } => {
                let transport = if matches!(self, ImageRef::Oci { .. }) { "oci" } else { "oci-archive" };
                write!(f, "{transport}:{}", path.display())?;
                if let Some(n) = name {
                    write!(f, ":{n}")?;
                }
                Ok(())
            }
        }
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_refs() {
        let r = p("docker://127.0.0.1:5000/team/app:v1");
        assert_eq!(
            r,
            ImageRef::Docker {
                host: "127.0.0.1:5000".into(),
                repo: "team/app".parse().unwrap(),
                tag: Some("v1".parse().unwrap()),
                digest: None
            }
        );
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/team/app:v1");
        let r = p("docker://localhost:5000/app");
        assert_eq!(r.registry_reference().unwrap().to_string(), "latest");
        assert_eq!(r.name(), None);
        assert_eq!(r.effective_name().unwrap().to_string(), "latest");
        let r = p(&format!("docker://reg.example/a/b@{D}"));
        assert_eq!(r.registry_reference().unwrap().to_string(), D);
        assert_eq!(r.effective_name(), None);
        let r = p(&format!("docker://reg.example/a:v2@{D}"));
        assert_eq!(r.registry_reference().unwrap().to_string(), D);
        assert_eq!(r.name().unwrap().to_string(), "v2");
        assert_eq!(p("docker://alpine").to_string(), "docker://docker.io/library/alpine");
        assert_eq!(p("docker://team/app:1").to_string(), "docker://docker.io/team/app:1");
    }

    #[test]
    fn layout_refs() {
        assert_eq!(
            p("oci:/tmp/x:v1"),
            ImageRef::Oci { path: "/tmp/x".into(), name: Some("v1".parse().unwrap()) }
        );
        assert_eq!(p("oci:rel/dir"), ImageRef::Oci { path: "rel/dir".into(), name: None });
        assert_eq!(p("oci-archive:/tmp/a.tar:latest").to_string(), "oci-archive:/tmp/a.tar:latest");
        // skopeo's split: the path ends at the first colon; the name keeps the others.
        let r = p("oci:/tmp/bundle:team/app:v1.2.0");
        assert_eq!(
            r,
            ImageRef::Oci { path: "/tmp/bundle".into(), name: Some("team/app:v1.2.0".parse().unwrap()) }
        );
        assert_eq!(r.to_string(), "oci:/tmp/bundle:team/app:v1.2.0");
    }

    #[test]
    fn clear_errors() {
        for (bad, want) in [
            ("dir:/tmp/x", "transport \"dir\" is not supported"),
            ("docker-daemon:alpine", "not supported"),
            ("127.0.0.1:5000/app", "no transport"),
            ("alpine", "no transport"),
            ("oci:", "path is empty"),
            ("oci:/x:bad tag", "ref.name"),
            ("oci:/x:a//b", "ref.name"),
            ("docker://reg.example/UPPER", "repository name"),
            ("docker://reg.example/a@sha256:zz", "hex"),
            ("docker://", "no repository"),
        ] {
            let e = bad.parse::<ImageRef>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
