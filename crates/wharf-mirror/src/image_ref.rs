//! Image references in skopeo's transport syntax:
//! `docker://HOST[:PORT]/REPO[:TAG][@DIGEST]`, `oci:PATH[:TAG]`, `oci-archive:FILE[:TAG]`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use wharf_oci::{Digest, Reference, RepoName, Tag};

use crate::MirrorError;

/// Docker Hub's canonical name and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Where an image is, and which one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A repository in a registry. Without tag and digest the tag is `latest`.
    Docker { host: String, repo: RepoName, tag: Option<Tag>, digest: Option<Digest> },
    /// An OCI image layout directory; the tag is the `org.opencontainers.image.ref.name`
    /// annotation of an `index.json` entry.
    Oci { path: PathBuf, tag: Option<Tag> },
    /// A tar of an OCI image layout.
    OciArchive { path: PathBuf, tag: Option<Tag> },
}

const TRANSPORTS: &str = "docker://HOST/REPO[:TAG|@DIGEST], oci:PATH[:TAG] or oci-archive:FILE[:TAG]";

impl ImageRef {
    /// The reference to read from this image as a source: its digest, else its tag, else
    /// `latest` (registry) or the only image (layout, `None`).
    pub fn source_reference(&self) -> Option<Reference> {
        match self {
            ImageRef::Docker { tag, digest, .. } => Some(match (digest, tag) {
                (Some(d), _) => Reference::Digest(d.clone()),
                (None, Some(t)) => Reference::Tag(t.clone()),
                (None, None) => Reference::Tag(latest()),
            }),
            ImageRef::Oci { tag, .. } | ImageRef::OciArchive { tag, .. } => tag.clone().map(Reference::Tag),
        }
    }

    /// The tag named in this reference, if any (not the implicit `latest`).
    pub fn tag(&self) -> Option<&Tag> {
        match self {
            ImageRef::Docker { tag, .. } | ImageRef::Oci { tag, .. } | ImageRef::OciArchive { tag, .. } => {
                tag.as_ref()
            }
        }
    }

    /// The tag this reference names or implies when read: `latest` for a registry reference
    /// with neither tag nor digest.
    pub fn effective_tag(&self) -> Option<Tag> {
        match self {
            ImageRef::Docker { tag: None, digest: None, .. } => Some(latest()),
            other => other.tag().cloned(),
        }
    }

    /// The same image location with another tag (for `sync`, which names tags itself).
    pub fn with_tag(&self, new: Option<Tag>) -> ImageRef {
        let mut r = self.clone();
        match &mut r {
            ImageRef::Docker { tag, digest, .. } => {
                *tag = new;
                *digest = None;
            }
            ImageRef::Oci { tag, .. } | ImageRef::OciArchive { tag, .. } => *tag = new,
        }
        r
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
            let (path, tag) = parse_path_tag(s, rest)?;
            return Ok(ImageRef::OciArchive { path, tag });
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            let (path, tag) = parse_path_tag(s, rest)?;
            return Ok(ImageRef::Oci { path, tag });
        }
        match s.split_once(':') {
            Some((t, _)) if !t.contains('/') && !t.contains('.') && !t.is_empty() => {
                Err(invalid(s, format!("transport {t:?} is not supported; use {TRANSPORTS}")))
            }
            _ => Err(invalid(s, format!("it has no transport; use {TRANSPORTS} (e.g. docker://{s})"))),
        }
    }
}

/// `PATH[:TAG]`, split at the first `:` as skopeo does.
fn parse_path_tag(s: &str, rest: &str) -> Result<(PathBuf, Option<Tag>), MirrorError> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(invalid(s, "the path is empty"));
    }
    let tag = match tag {
        None | Some("") => None,
        Some(t) => Some(t.parse::<Tag>().map_err(|e| invalid(s, e))?),
    };
    Ok((PathBuf::from(path), tag))
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
            ImageRef::Oci { path, tag } | ImageRef::OciArchive { path, tag } => {
                let transport = if matches!(self, ImageRef::Oci { .. }) { "oci" } else { "oci-archive" };
                write!(f, "{transport}:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
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
        assert_eq!(r.source_reference().unwrap().to_string(), "latest");
        assert_eq!(r.tag(), None);
        let r = p(&format!("docker://reg.example/a/b@{D}"));
        assert_eq!(r.source_reference().unwrap().to_string(), D);
        assert_eq!(r.effective_tag(), None);
        let r = p(&format!("docker://reg.example/a:v2@{D}"));
        assert_eq!(r.source_reference().unwrap().to_string(), D);
        assert_eq!(r.tag().unwrap().as_str(), "v2");
        assert_eq!(p("docker://alpine").to_string(), "docker://docker.io/library/alpine");
        assert_eq!(p("docker://team/app:1").to_string(), "docker://docker.io/team/app:1");
    }

    #[test]
    fn layout_refs() {
        assert_eq!(
            p("oci:/tmp/x:v1"),
            ImageRef::Oci { path: "/tmp/x".into(), tag: Some("v1".parse().unwrap()) }
        );
        assert_eq!(p("oci:rel/dir"), ImageRef::Oci { path: "rel/dir".into(), tag: None });
        assert_eq!(p("oci-archive:/tmp/a.tar:latest").to_string(), "oci-archive:/tmp/a.tar:latest");
    }

    #[test]
    fn clear_errors() {
        for (bad, want) in [
            ("dir:/tmp/x", "transport \"dir\" is not supported"),
            ("docker-daemon:alpine", "not supported"),
            ("127.0.0.1:5000/app", "no transport"),
            ("alpine", "no transport"),
            ("oci:", "path is empty"),
            ("oci:/x:bad tag", "tag"),
            ("docker://reg.example/UPPER", "repository name"),
            ("docker://reg.example/a@sha256:zz", "hex"),
            ("docker://", "no repository"),
        ] {
            let e = bad.parse::<ImageRef>().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
