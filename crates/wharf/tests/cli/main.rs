//! The `wharf` binary against the real clients: skopeo, podman (and the registry's own
//! config file and flags). One test binary for the crate.

mod auth;
mod containerd;
mod copy;
mod faults;
mod fill;
mod gc;
mod hostile;
mod interop;
mod ldap;
mod mirrors;
mod packaging;
mod pullthrough;
mod replicas;
mod report;
mod server;
mod sparse;
mod sync;
mod tls;
mod trust;
mod upgrade;
mod webhooks;
