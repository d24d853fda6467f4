//! The `wharf` binary against the real clients: skopeo, podman (and the registry's own
//! config file and flags). One test binary for the crate.

mod auth;
mod containerd;
mod copy;
mod fill;
mod gc;
mod hostile;
mod interop;
mod mirrors;
mod pullthrough;
mod replicas;
mod report;
mod server;
mod sparse;
mod sync;
mod tls;
mod trust;
