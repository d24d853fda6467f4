//! OCI and Docker registry vocabulary, parsed once at the edge of the program.
//!
//! Nothing here does I/O or async: it is the shared language of every other crate.

pub mod digest;
pub mod name;

pub use digest::{Algorithm, Digest, DigestError, DigestHasher};
pub use name::{NameError, RepoName, Tag};
