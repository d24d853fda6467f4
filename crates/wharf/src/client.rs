//! Building a registry client with credentials, as `inspect`, `report` and upstreams do.

use std::path::PathBuf;

use wharf_client::{ClientOptions, Credentials, RegistryClient};

/// A client for `host`: credentials from `creds` (`USER:PASSWORD`), else the auth files docker
/// and podman use.
pub(crate) fn registry_client(
    host: &str,
    tls_verify: bool,
    creds: Option<&str>,
    cert_dir: Option<PathBuf>,
) -> anyhow::Result<RegistryClient> {
    client_with(host, tls_verify, creds, cert_dir, ClientOptions::default().max_retries)
}

/// The client of an `[[upstreams]]` entry: it retries less than the CLI's, because a client
/// pulling through Wharf waits meanwhile, and when the upstream is down what is stored here is
/// served instead.
pub(crate) fn upstream_client(
    host: &str,
    tls_verify: bool,
    creds: Option<&str>,
    cert_dir: Option<PathBuf>,
) -> anyhow::Result<RegistryClient> {
    client_with(host, tls_verify, creds, cert_dir, 2)
}

fn client_with(
    host: &str,
    tls_verify: bool,
    creds: Option<&str>,
    cert_dir: Option<PathBuf>,
    max_retries: u32,
) -> anyhow::Result<RegistryClient> {
    let credentials = match creds {
        Some(c) => Some(Credentials::parse_user_pass(c)?),
        None => wharf_client::credentials_for(host)?,
    };
    let options =
        ClientOptions { tls_verify, credentials, cert_dir, max_retries, ..ClientOptions::default() };
    Ok(RegistryClient::new(host, options)?)
}
