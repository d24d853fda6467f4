//! `wharf sync` against real peers: CNCF distribution 2.8 as the source (three repositories,
//! five tags each, a base layer shared by all), an in-process Wharf (sparse policy) and OCI
//! bundles as destinations.

mod harness;

mod air_gapped;
mod dry_run;
mod failures;
mod to_registry;
