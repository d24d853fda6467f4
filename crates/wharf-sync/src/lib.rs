//! `wharf sync`: many images from one config file, on top of `wharf-mirror`'s copy engine,
//! incrementally, in parallel, and through air-gapped bundles (`oci:`/`oci-archive:`).

pub mod config;
pub mod select;

pub use config::{Defaults, ImageSpec, SyncConfig};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync config: {0}")]
    Config(String),
    #[error(transparent)]
    Mirror(#[from] wharf_mirror::MirrorError),
}
