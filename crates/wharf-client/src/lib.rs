//! An OCI distribution registry client for `wharf copy`, `sync` and `inspect`.
//!
//! - one [`RegistryClient`] per registry host (cheap to clone, shares connections and tokens);
//! - auth: anonymous, basic, and the Docker token flow (`WWW-Authenticate: Bearer`), tokens
//!   cached per scope set until they expire; credentials from [`credentials_for`];
//! - retries with exponential backoff on 429, 502, 503, 504 and dropped connections, honouring
//!   `Retry-After`;
//! - blobs stream in both directions (memory does not grow with blob size); downloads verify the
//!   digest as they go and resume with `Range` after a dropped connection; uploads are monolithic
//!   up to [`ClientOptions::chunk_size`], chunked (`PATCH` + `Content-Range`) above, and resume
//!   from the registry's upload status when the source can be reopened
//!   ([`RegistryClient::push_blob_resumable`]);
//! - manifests are returned as the exact bytes received, their digest computed over them.
//!
//! Secrets (passwords, tokens, `Authorization` headers) never appear in `Debug`, errors or logs.

mod auth;
mod blob;
mod challenge;
mod client;
mod credentials;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ops;

pub use blob::{BlobOpener, Mounted, UploadSession};
pub use client::{ClientOptions, DEFAULT_CHUNK_SIZE, PingInfo, RegistryClient, is_loopback_host};
pub use credentials::{Credentials, credentials_for, credentials_in, default_auth_files};
pub use error::{ClientError, RegistryErrorEntry};
pub use ops::{MANIFEST_ACCEPT, RawManifest};

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

/// A stream of blob bytes. Streams returned by the client end with an `Err` if anything went
/// wrong, including a digest mismatch: consume to the end before trusting the bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ClientError>> + Send>>;

/// The mirror runs these on `tokio::spawn`: every future must be `Send` (checked at compile time).
#[cfg(test)]
#[allow(dead_code)]
fn futures_are_send(
    c: RegistryClient,
    r: wharf_oci::RepoName,
    d: wharf_oci::Digest,
    s: ByteStream,
    o: BlobOpener,
) {
    fn send<T: Send>(_: T) {}
    let reference = wharf_oci::Reference::Digest(d.clone());
    send(c.ping());
    send(c.get_manifest(&r, &reference));
    send(c.head_manifest(&r, &reference));
    send(c.put_manifest(&r, &reference, "", Bytes::new()));
    send(c.delete_manifest(&r, &reference));
    send(c.head_blob(&r, &d));
    send(c.get_blob(&r, &d, 0));
    send(c.mount_blob(&r, &d, &r));
    send(c.push_blob(&r, &d, 0, s));
    send(c.mount_or_start(&r, &d, &r));
    send(c.push_blob_resumable(&r, &d, 0, o));
    send(c.push_blob_bytes(&r, &d, Bytes::new()));
    send(c.list_tags(&r));
    send(c.referrers(&r, &d, None));
    send(c.get_raw("/v2/"));
}
