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
    let credentials = match creds {
        Some(c) => Some(Credentials::parse_user_pass(c)?),
        None => wharf_client::credentials_for(host)?,
    };
    let options = ClientOptions { tls_verify, credentials, cert_dir, ..ClientOptions::default() };
    Ok(RegistryClient::new(host, options)?)
}
