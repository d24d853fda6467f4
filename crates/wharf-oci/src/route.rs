//! The `/v2/` path grammar. Repository names contain slashes, so routes are recognised
//! from the right: the last segments say which endpoint, the rest is the name.

use crate::{Digest, DigestError, NameError, RepoName, Tag};

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl std::str::FromStr for Reference {
    type Err = RouteError;

    fn from_str(s: &str) -> Result<Self, RouteError> {
        if s.contains(':') { Ok(Reference::Digest(s.parse()?)) } else { Ok(Reference::Tag(s.parse()?)) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(RepoName),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(RepoName, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(RepoName, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(RepoName),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(RepoName, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(RepoName, Digest),
    /// `/v2/<name>/_wharf/<rest>`: Wharf's extension endpoints of one repository.
    Extension(RepoName, String),
    /// `/v2/_wharf/<rest>`: Wharf's registry-wide extension endpoints (the storage report).
    /// No repository name can collide: a name component starts with a lowercase letter or
    /// a digit, never with `_`.
    RegistryExtension(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no such endpoint")]
    NotFound,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl Route {
    /// Recognise a request path (without query string).
    pub fn parse(path: &str) -> Result<Route, RouteError> {
        let rest = path.strip_prefix("/v2").ok_or(RouteError::NotFound)?;
        if rest.is_empty() || rest == "/" {
            return Ok(Route::Base);
        }
        let rest = rest.strip_prefix('/').ok_or(RouteError::NotFound)?;
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        // Before the suffixes: `/v2/_wharf/x/manifests/y` is an extension path, not a
        // manifest of a repository named `_wharf/x` (which could not exist anyway).
        if rest == "_wharf" {
            return Ok(Route::RegistryExtension(String::new()));
        }
        if let Some(ext) = rest.strip_prefix("_wharf/") {
            return Ok(Route::RegistryExtension(ext.to_owned()));
        }
        let segs: Vec<&str> = rest.split('/').collect();
        let n = segs.len();
        let name = |k: usize| -> Result<RepoName, RouteError> {
            if k == 0 {
                return Err(RouteError::NotFound);
            }
            Ok(segs[..k].join("/").parse()?)
        };
        // Longest suffixes first: `blobs/uploads/<id>` before `blobs/<digest>`.
        if n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
            let id = segs[n - 1];
            let repo = name(n - 3)?;
            return Ok(if id.is_empty() {
                Route::UploadStart(repo)
            } else {
                Route::Upload(repo, id.to_owned())
            });
        }
        if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
            return Ok(Route::UploadStart(name(n - 2)?));
        }
        if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
            return Ok(Route::Tags(name(n - 2)?));
        }
        if n >= 2 {
            let last = segs[n - 1];
            match segs[n - 2] {
                "manifests" => return Ok(Route::Manifest(name(n - 2)?, last.parse()?)),
                "blobs" => return Ok(Route::Blob(name(n - 2)?, last.parse()?)),
                "referrers" => return Ok(Route::Referrers(name(n - 2)?, last.parse()?)),
                _ => {}
            }
        }
        if let Some(i) = segs.iter().position(|s| *s == "_wharf") {
            return Ok(Route::Extension(name(i)?, segs[i + 1..].join("/")));
        }
        Err(RouteError::NotFound)
    }

    /// The repository a route addresses, if any.
    pub fn repo(&self) -> Option<&RepoName> {
        match self {
            Route::Base | Route::Catalog | Route::RegistryExtension(_) => None,
            Route::Tags(r)
            | Route::Manifest(r, _)
            | Route::Blob(r, _)
            | Route::UploadStart(r)
            | Route::Upload(r, _)
            | Route::Referrers(r, _)
            | Route::Extension(r, _) => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn name(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn recognises_every_endpoint() {
        assert_eq!(Route::parse("/v2/").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2").unwrap(), Route::Base);
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert_eq!(Route::parse("/v2/a/b/tags/list").unwrap(), Route::Tags(name("a/b")));
        assert_eq!(
            Route::parse("/v2/a/manifests/v1").unwrap(),
            Route::Manifest(name("a"), Reference::Tag("v1".parse().unwrap()))
        );
        assert_eq!(
            Route::parse(&format!("/v2/a/blobs/{D}")).unwrap(),
            Route::Blob(name("a"), D.parse().unwrap())
        );
        assert_eq!(Route::parse("/v2/a/blobs/uploads/").unwrap(), Route::UploadStart(name("a")));
        assert_eq!(Route::parse("/v2/a/blobs/uploads/xyz").unwrap(), Route::Upload(name("a"), "xyz".into()));
        assert_eq!(
            Route::parse(&format!("/v2/a/referrers/{D}")).unwrap(),
            Route::Referrers(name("a"), D.parse().unwrap())
        );
        assert_eq!(
            Route::parse("/v2/a/b/_wharf/index/v1").unwrap(),
            Route::Extension(name("a/b"), "index/v1".into())
        );
        // Names may contain segments that look like endpoints.
        assert_eq!(
            Route::parse("/v2/blobs/manifests/manifests/latest").unwrap(),
            Route::Manifest(name("blobs/manifests"), Reference::Tag("latest".parse().unwrap()))
        );
    }

    #[test]
    fn registry_extensions_never_collide_with_repositories() {
        assert_eq!(Route::parse("/v2/_wharf/storage").unwrap(), Route::RegistryExtension("storage".into()));
        assert_eq!(Route::parse("/v2/_wharf/").unwrap(), Route::RegistryExtension(String::new()));
        assert_eq!(Route::parse("/v2/_wharf").unwrap(), Route::RegistryExtension(String::new()));
        assert_eq!(
            Route::parse("/v2/_wharf/x/manifests/v1").unwrap(),
            Route::RegistryExtension("x/manifests/v1".into())
        );
        assert_eq!(Route::parse("/v2/_wharf/storage").unwrap().repo(), None);
        // `_wharf` cannot start a repository name, nor be a component of one.
        for bad in ["_wharf", "_wharf/storage", "a/_wharf", "_wharf-x"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        // A repository may be named `wharf`, or `storage`, or end with `storage`: those
        // stay repository routes.
        assert_eq!(Route::parse("/v2/wharf/storage/tags/list").unwrap(), Route::Tags(name("wharf/storage")));
        assert_eq!(
            Route::parse("/v2/storage/_wharf/storage").unwrap(),
            Route::Extension(name("storage"), "storage".into())
        );
        // The catalog and `_wharfx` are not the extension.
        assert_eq!(Route::parse("/v2/_catalog").unwrap(), Route::Catalog);
        assert!(matches!(Route::parse("/v2/_wharfx/storage"), Err(RouteError::NotFound)));
    }

    #[test]
    fn rejects_hostile_paths() {
        assert!(matches!(Route::parse("/v2/../etc/manifests/x"), Err(RouteError::Name(_))));
        assert!(matches!(Route::parse("/v2/UPPER/tags/list"), Err(RouteError::Name(_))));
        assert!(matches!(Route::parse("/v2/a/manifests/sha256:nothex"), Err(RouteError::Digest(_))));
        assert!(matches!(Route::parse("/v2/a/manifests/bad:tag"), Err(RouteError::Digest(_))));
        assert!(matches!(Route::parse("/v2/a/nothing"), Err(RouteError::NotFound)));
        assert!(matches!(Route::parse("/v3/"), Err(RouteError::NotFound)));
        assert!(matches!(Route::parse("/v2/manifests/x"), Err(RouteError::NotFound)));
    }
}
