//! `wharf sync`: many images from one config file, on top of `wharf-mirror`'s copy engine,
//! incrementally, in parallel, and through air-gapped bundles (`oci:`/`oci-archive:`).
//!
//! - [`sync`]: plan (list tags, select, name destinations), then copy the images `jobs` at a
//!   time over one shared `Copier` (one blob ledger: each blob moves at most once per
//!   destination), then write the bundles. One image failing never stops the others.
//! - [`load_bundle`]: the second air-gapped step, a bundle into a registry.
//! - [`verify_bundle`]: re-hash a bundle before it travels.
//! - [`run_mirror`]: one run of a registry's own mirror (`[[mirrors]]`): `sync` of a
//!   one-entry config into the registry itself.
//! - [`load_configs`]: Wharf's TOML or skopeo's sync YAML.

pub mod bundle;
pub mod config;
pub mod mirror;
pub mod naming;
mod plan;
pub mod report;
mod run;
pub mod select;
pub mod skopeo;

pub use bundle::{Bundle, BundleVerification, load_bundle, parse_size, verify_bundle};
pub use config::{Defaults, ImageSpec, SyncConfig};
pub use mirror::{LocalTarget, MirrorSpec, parse_duration, parse_interval, run_mirror};
pub use naming::{Destination, Rule};
pub use report::{ImageRow, Status, SyncReport};
pub use run::{SyncOptions, sync, sync_all};
pub use skopeo::load_configs;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync config: {0}")]
    Config(String),
    /// A bad destination, bundle or flag.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Mirror(#[from] wharf_mirror::MirrorError),
}
