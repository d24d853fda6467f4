//! Test helpers for Wharf, all over real components (no mocks):
//!
//! - [`free_port`] and [`require_tool`];
//! - [`Garage`]: a real S3-compatible object store (one node, a bucket and a key);
//! - [`Nginx`]: a round-robin load balancer in front of several registries;
//! - [`PrivatePostgres`]: a PostgreSQL server of the test's own, to restart under load;
//! - [`Distribution`]: a real CNCF distribution 2.8 (Debian's `docker-registry`) on loopback,
//!   optionally behind htpasswd basic auth or the Docker token flow (with a token issuer);
//! - [`TestImage`]: deterministic multi-platform images (OCI or Docker media types) with real
//!   gzip'd tar layers, written as an OCI image layout or archive, or kept in memory;
//! - [`RegistryClient`]: a plain-HTTP pusher (monolithic POST+PUT uploads, manifests by digest
//!   then the index by tag) built on `reqwest`;
//! - [`Podman`], [`skopeo`], [`run_ok`]: the real clients with the flags they need here;
//! - [`Slapd`]: a real OpenLDAP server with its own config and a small directory (users,
//!   groups, a search account), optionally with ldaps:// and StartTLS;
//! - [`HostileRegistry`]: a registry written by hand that misbehaves on purpose (cut blobs,
//!   429/503, wrong hashes, redirects, endless headers);
//! - [`sign`]: cosign-style signatures (simple-signing payload, ECDSA P-256) and SBOM artifacts.
//!
//! This crate is a dev-dependency only; its functions panic on environment failures (a missing
//! tool, a registry that does not start) with a message that says what to do.

mod distribution;
mod garage;
pub mod hostile;
mod image;
mod nginx;
mod postgres;
mod push;
pub mod sign;
mod slapd;
mod token;
mod tools;
#[cfg(feature = "wharf")]
pub mod wharf;

use std::net::TcpListener;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

pub use distribution::{Distribution, htpasswd_line};
pub use garage::{GARAGE_REGION, GARAGE_VERSION, Garage, garage_binary};
pub use hostile::{Fault, HostileRegistry, Seen, raw_tar_entry};
pub use image::{
    Blob, Descriptor, ImageChild, Manifest, MediaTypes, Platform, REF_NAME, TestImage, TestImageBuilder,
    add_layout_ref, media_type, tar_layout, write_layout_blobs,
};
pub use nginx::Nginx;
pub use postgres::PrivatePostgres;
pub use push::{ACCEPT_ALL_MANIFESTS, PushError, RegistryClient};
pub use slapd::{LDAP_BASE, LDAP_BIND_DN, LDAP_BIND_PASSWORD, LDAP_GROUPS, LDAP_PEOPLE, Slapd, SlapdBuilder};
pub use token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenIssuer};
pub use tools::{Podman, run_fails, run_ok, run_output, skopeo, skopeo_inspect_raw};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Where a command-line tool lives on `PATH`; panics with a clear message if it is missing.
///
/// `.ci/run` installs every tool the tests use (skopeo, podman, buildah, docker-registry, wrk).
pub fn require_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| {
        panic!(
            "this test needs the `{name}` command, which is not on PATH.\n\
             Install it the way CI does: run `.ci/run` as root, or \
             `apt-get install -y {pkg}` on Debian 12.",
            pkg = debian_package(name)
        )
    })
}

/// Like [`require_tool`] but returns `None` instead of panicking.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn debian_package(tool: &str) -> &str {
    match tool {
        "htpasswd" => "apache2-utils",
        "openssl" => "openssl",
        "nginx" => "nginx-light",
        "slapd" | "slapadd" => "slapd",
        other => other,
    }
}

/// `sha256:<hex>` of the bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of `sha256:<hex>` (panics on another algorithm: test input only).
pub fn digest_hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or_else(|| panic!("expected a sha256 digest, got {digest:?}"))
}

/// `len` incompressible bytes, the same for the same `seed` and different for every other one,
/// so that a failing test reproduces.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    Rng(seed).bytes(len)
}

/// Deterministic pseudo-random bytes (splitmix64), so generated images are reproducible.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from any label: the same label always gives the same stream.
    pub(crate) fn from_label(label: &str) -> Self {
        let h = Sha256::digest(label.as_bytes());
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&h[..8]);
        Rng(u64::from_le_bytes(seed))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port is free");
    }

    #[test]
    fn rng_is_deterministic() {
        assert_eq!(Rng::from_label("a").bytes(100), Rng::from_label("a").bytes(100));
        assert_ne!(Rng::from_label("a").bytes(16), Rng::from_label("b").bytes(16));
    }

    #[test]
    fn require_tool_finds_sh() {
        assert!(require_tool("sh").ends_with("sh"));
    }

    #[test]
    #[should_panic(expected = "needs the `no-such-tool-wharf` command")]
    fn require_tool_panics_clearly() {
        require_tool("no-such-tool-wharf");
    }
}
