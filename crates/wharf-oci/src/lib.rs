//! OCI and Docker registry vocabulary, parsed once at the edge of the program.
//!
//! Nothing here does I/O or async: it is the shared language of every other crate.

pub mod digest;
pub mod error_code;
pub mod manifest;
pub mod media_types;
pub mod name;
pub mod platform;
pub mod route;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use error_code::ErrorCode;
pub use manifest::{Descriptor, MAX_MANIFEST_BYTES, Manifest, ManifestError, ManifestKind};
pub use name::{NameError, RepoName, Tag};
pub use platform::{Platform, PlatformError};
pub use route::{Reference, Route, RouteError};
