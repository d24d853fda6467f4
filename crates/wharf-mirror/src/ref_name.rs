//! Names of images: `org.opencontainers.image.ref.name` in an OCI layout, and [`ImageName`],
//! a tag or a ref name depending on the end it is read from or published to.

use std::fmt;
use std::str::FromStr;

use wharf_oci::{Digest, Reference, RepoName, Tag};

use crate::MirrorError;

/// A ref name in an OCI layout's `index.json` (the `org.opencontainers.image.ref.name`
/// annotation), with the image spec's grammar, as skopeo and containers/image check it:
///
/// ```text
/// ref       ::= component ("/" component)*
/// component ::= alphanum (separator alphanum)*
/// alphanum  ::= [A-Za-z0-9]+
/// separator ::= [-._:@+] | "--"
/// ```
///
/// Unlike a registry tag it may hold `/`, `:` and `@`: a bundle names images
/// `team/app:v1.2.0` or `team/app@sha256:…`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefName(String);

impl RefName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `REPO:TAG` or `REPO@DIGEST` (how `wharf sync` names images in a bundle) as a repository
    /// and a reference; `None` for any other ref name (`v1`, `sha256-….sig`).
    pub fn split_repository(&self) -> Option<(RepoName, Reference)> {
        let s = self.as_str();
        let (repo, reference) = match s.split_once('@') {
            Some((repo, digest)) => (repo, Reference::Digest(digest.parse::<Digest>().ok()?)),
            None => {
                let (repo, tag) = s.rsplit_once(':')?;
                (repo, Reference::Tag(tag.parse::<Tag>().ok()?))
            }
        };
        Some((repo.parse::<RepoName>().ok()?, reference))
    }

    /// The bundle ref name of an image: `REPO:TAG` or `REPO@DIGEST`. Fails only for the few
    /// tags the ref-name grammar refuses (starting with `_`, holding `__` or `._`).
    pub fn for_repository(repo: &RepoName, reference: &Reference) -> Result<RefName, MirrorError> {
        match reference {
            Reference::Tag(t) => format!("{repo}:{t}").parse(),
            Reference::Digest(d) => format!("{repo}@{d}").parse(),
        }
    }
}

fn is_separator_char(c: u8) -> bool {
    matches!(c, b'-' | b'.' | b'_' | b':' | b'@' | b'+')
}

fn valid_component(c: &[u8]) -> bool {
    let (Some(first), Some(last)) = (c.first(), c.last()) else { return false };
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < c.len() {
        if c[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        if !is_separator_char(c[i]) {
            return false;
        }
        // One separator, or exactly "--"; the next byte must start an alphanum run.
        let len = if c[i] == b'-' && c.get(i + 1) == Some(&b'-') { 2 } else { 1 };
        i += len;
        if !c.get(i).is_some_and(u8::is_ascii_alphanumeric) {
            return false;
        }
    }
    true
}

impl FromStr for RefName {
    type Err = MirrorError;

    fn from_str(s: &str) -> Result<Self, MirrorError> {
        if !s.split('/').all(|c| valid_component(c.as_bytes())) {
            return Err(MirrorError::InvalidReference(format!(
                "{s:?} is not a valid image name in an OCI layout (org.opencontainers.image.ref.name: \
                 components of letters and digits separated by one of - . _ : @ + or --, joined by /)"
            )));
        }
        Ok(RefName(s.to_owned()))
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl serde::Serialize for RefName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// The name an image is read by or published under: a tag in a registry, a ref name in a
/// layout. Each end converts it to its own kind, failing where it cannot hold the name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageName {
    Tag(Tag),
    Ref(RefName),
}

impl ImageName {
    /// As a registry tag. A bundle ref name `REPO:TAG` gives its tag; `REPO@DIGEST` gives
    /// `None` (the image goes by digest, untagged).
    pub fn to_tag(&self) -> Result<Option<Tag>, MirrorError> {
        match self {
            ImageName::Tag(t) => Ok(Some(t.clone())),
            ImageName::Ref(r) => {
                if let Ok(t) = r.as_str().parse::<Tag>() {
                    return Ok(Some(t));
                }
                match r.split_repository() {
                    Some((_, Reference::Tag(t))) => Ok(Some(t)),
                    Some((_, Reference::Digest(_))) => Ok(None),
                    None => Err(MirrorError::InvalidReference(format!(
                        "the OCI layout name {r:?} cannot be a registry tag: name the destination tag"
                    ))),
                }
            }
        }
    }

    /// As a layout ref name.
    pub fn to_ref_name(&self) -> Result<RefName, MirrorError> {
        match self {
            ImageName::Ref(r) => Ok(r.clone()),
            ImageName::Tag(t) => t.as_str().parse::<RefName>().map_err(|_| {
                MirrorError::InvalidReference(format!(
                    "tag {t:?} cannot name an image in an OCI layout (ref names are letters and digits \
                     separated by single - . _ : @ + or --): name the destination explicitly"
                ))
            }),
        }
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageName::Tag(t) => t.fmt(f),
            ImageName::Ref(r) => r.fmt(f),
        }
    }
}

impl From<Tag> for ImageName {
    fn from(t: Tag) -> Self {
        ImageName::Tag(t)
    }
}

impl From<RefName> for ImageName {
    fn from(r: RefName) -> Self {
        ImageName::Ref(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        for ok in [
            "v1",
            "team/app:v1.2.0",
            "a--b",
            "sha256-abc.sig",
            "x+y@z",
            "1",
            "team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(ok.parse::<RefName>().is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "_a", "a_", "a__b", "a---b", "a b", "a:/b", "ä", "a.-b"] {
            assert!(bad.parse::<RefName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn repository_split() {
        let r: RefName = "team/app:v1.2.0".parse().unwrap();
        let (repo, reference) = r.split_repository().unwrap();
        assert_eq!((repo.as_str(), reference.to_string().as_str()), ("team/app", "v1.2.0"));
        assert_eq!(RefName::for_repository(&repo, &reference).unwrap(), r);
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let r: RefName = format!("a/b@{d}").parse().unwrap();
        assert!(matches!(r.split_repository(), Some((_, Reference::Digest(_)))));
        assert!("v1".parse::<RefName>().unwrap().split_repository().is_none());
        assert!("sha256-ab.sig".parse::<RefName>().unwrap().split_repository().is_none());
    }

    #[test]
    fn conversions() {
        let r = ImageName::Ref("team/app:v1".parse().unwrap());
        assert_eq!(r.to_tag().unwrap().unwrap().as_str(), "v1");
        assert!(ImageName::Ref("a/b".parse().unwrap()).to_tag().is_err());
        let odd = ImageName::Tag("_x".parse().unwrap());
        assert!(odd.to_ref_name().is_err());
        assert_eq!(ImageName::Tag("v1".parse().unwrap()).to_ref_name().unwrap().as_str(), "v1");
    }
}
