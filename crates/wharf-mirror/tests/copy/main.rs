//! `wharf_mirror::copy` against real peers: CNCF distribution 2.8 (no referrers API, refuses
//! sparse indexes), an in-process Wharf (sparse policy), OCI layouts and archives read back by
//! skopeo; and hostile peers and archives (`hostile`).

mod harness;

mod hostile;
mod interrupt;
mod layouts;
mod requests;
mod to_distribution;
mod to_wharf;
