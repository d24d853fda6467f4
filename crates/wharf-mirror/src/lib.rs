//! Wharf's mirror: copy an image between registries (`docker://`), OCI layouts (`oci:`) and
//! OCI archives (`oci-archive:`), optionally only some platforms of an index, keeping the
//! index byte for byte so its digest and signatures stay valid (DESIGN.md, "The mirror").
//!
//! One algorithm serves every pair of transports; each side is an `Endpoint` (a registry
//! repository or a layout; an archive is a layout in a temporary directory, written to its
//! file once by [`Copier::finish`]). Everything is verified against its digest while it
//! streams; a layout write is a temporary file, fsync and rename; a registry verifies on the
//! final `PUT`. An interrupted copy run again moves only what is missing. With
//! `CopyOptions::dry_run` the same algorithm plans instead: it reads both ends and adds up
//! sizes, and writes nothing.
//!
//! For `wharf sync`'s bundles: layout names are [`RefName`]s (`team/app:v1`), archives can be
//! split into parts (`CopyOptions::max_archive_size`), and [`verify_layout`] /
//! [`verify_archive`] re-hash a bundle.
//!
//! ```no_run
//! # async fn f() -> Result<(), wharf_mirror::MirrorError> {
//! use std::sync::Arc;
//! use wharf_mirror::{CopyOptions, Copier, NoProgress};
//! let opts = CopyOptions { platforms: vec!["linux/arm64".parse().unwrap()], ..Default::default() };
//! let copier = Copier::new(opts, Arc::new(NoProgress));
//! let report = copier
//!     .copy(&"docker://src.example/app:v1".parse()?, &"docker://127.0.0.1:5000/mirror/app:v1".parse()?)
//!     .await?;
//! println!("{} bytes copied", report.bytes_copied);
//! # Ok(()) }
//! ```

mod archive;
mod copier;
mod endpoint;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod image_ref;
mod index;
mod job;
mod layout;
mod layouts;
mod ledger;
mod progress;
mod ref_name;
mod referrers;
mod report;
mod select;
mod split;
mod stream;
mod transfer;
mod trust;
mod verify;

pub use archive::{archive_parts, part_path};
pub use copier::{Copier, CopyOptions, FinishReport, copy};
pub use error::MirrorError;
pub use image_ref::ImageRef;
pub use layout::{OciLayout, REF_NAME};
pub use ledger::BlobLedger;
pub use progress::{BlobOutcome, NoProgress, Progress};
pub use ref_name::{ImageName, RefName};
pub use report::{CopyReport, ImageReport};
pub use split::{PART_ANNOTATION, PARTS_ANNOTATION};
pub use trust::{PlatformTrust, TrustReport};
pub use verify::{VerifyReport, verify_archive, verify_layout};
pub use wharf_trust::{PublicKey, Verdict};
