//! A real CNCF distribution 2.8 registry (Debian's `docker-registry`) on a loopback port.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::push::RegistryClient;
use crate::token::{TOKEN_ISSUER, TOKEN_SERVICE, TokenIssuer};
use crate::{free_port, require_tool};

/// A running `docker-registry serve` with filesystem storage in a temporary directory, on
/// `127.0.0.1:<free port>`, deletes enabled. Killed (and its storage removed) on drop.
///
/// It has no referrers API and refuses an index whose children are missing
/// (`400 MANIFEST_BLOB_UNKNOWN`): a strict destination and a real upstream.
pub struct Distribution {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// User and password, when started with [`Distribution::start_with_basic_auth`] (checked by
    /// the registry) or [`Distribution::start_with_token_auth`] (checked by the token issuer).
    pub credentials: Option<(String, String)>,
    /// The token issuer, when started with [`Distribution::start_with_token_auth`].
    pub token_issuer: Option<TokenIssuer>,
    child: Child,
    dir: TempDir,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    None,
    Basic,
    Token,
}

impl Distribution {
    /// Starts an anonymous registry; panics if it does not answer `GET /v2/` within 15 s.
    pub fn start() -> Distribution {
        Self::start_inner(Auth::None, None)
    }

    /// Starts a registry that requires basic auth (htpasswd, bcrypt) for every request.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Distribution {
        Self::start_inner(Auth::Basic, Some((user.to_owned(), password.to_owned())))
    }

    /// Starts a registry that requires a bearer token for every request (the Docker token flow:
    /// `401` with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`), with a token issuer
    /// on another loopback port. The issuer wants basic auth `user:password` when given, and
    /// hands out tokens to anyone when `None`; it grants every scope asked for.
    pub fn start_with_token_auth(credentials: Option<(&str, &str)>) -> Distribution {
        let credentials = credentials.map(|(u, p)| (u.to_owned(), p.to_owned()));
        Self::start_inner(Auth::Token, credentials)
    }

    fn start_inner(auth: Auth, credentials: Option<(String, String)>) -> Distribution {
        let binary = require_tool("docker-registry");
        let dir = tempfile::Builder::new().prefix("wharf-distribution-").tempdir().expect("temp dir");
        let mut token_issuer = None;
        match (auth, &credentials) {
            (Auth::Basic, Some((user, password))) => {
                fs::write(dir.path().join("htpasswd"), htpasswd_line(user, password)).expect("write htpasswd")
            }
            (Auth::Token, _) => token_issuer = Some(TokenIssuer::start(dir.path(), credentials.clone())),
            _ => {}
        }
        let realm = token_issuer.as_ref().map(|t| t.realm.clone());
        let mut last_log = String::new();
        // A free port can be taken by someone else before the registry binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.path().join("config.yml");
            fs::write(&config, config_yaml(dir.path(), &addr, auth, realm.as_deref())).expect("write config");
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path).expect("create log");
            let mut cmd = Command::new(&binary);
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log"))
                .stderr(log);
            // distribution maps REGISTRY_* variables onto its config (REGISTRY_AUTH_FILE,
            // which containers tools use, would turn on an unknown auth backend).
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let mut child = cmd.spawn().expect("spawn docker-registry");
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    last_log = fs::read_to_string(&log_path).unwrap_or_default();
                    break;
                }
                let status = http_status(&addr, "/v2/");
                let ready = status == Some(200) || (auth != Auth::None && status == Some(401));
                if ready {
                    return Distribution { addr, credentials, token_issuer, child, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer GET /v2/ on {addr} within 15 s; log:\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("docker-registry exited at start five times; last log:\n{last_log}");
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `docker://127.0.0.1:PORT/<repo_and_ref>` for skopeo (add `--tls-verify=false`).
    pub fn docker_ref(&self, repo_and_ref: &str) -> String {
        format!("docker://{}/{repo_and_ref}", self.addr)
    }

    /// A plain-HTTP client for this registry, with its credentials if any (it follows the
    /// token flow by itself).
    pub fn client(&self) -> RegistryClient {
        let client = RegistryClient::new(&self.addr);
        match &self.credentials {
            Some((u, p)) => client.with_basic_auth(u, p),
            None => client,
        }
    }

    /// `--creds USER:PASSWORD` for skopeo (empty when anonymous).
    pub fn skopeo_creds(&self) -> Vec<String> {
        match &self.credentials {
            Some((u, p)) => vec!["--creds".into(), format!("{u}:{p}")],
            None => Vec::new(),
        }
    }

    /// The storage root directory (to inspect or corrupt what the registry stored).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The registry's log so far (level warn: mostly empty unless something went wrong).
    pub fn logs(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_yaml(dir: &Path, addr: &str, auth: Auth, realm: Option<&str>) -> String {
    let mut yaml = format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: wharf-testkit-not-a-secret
",
        data = dir.join("data").display()
    );
    match auth {
        Auth::None => {}
        Auth::Basic => yaml.push_str(&format!(
            "auth:
  htpasswd:
    realm: wharf-testkit
    path: {}
",
            dir.join("htpasswd").display()
        )),
        Auth::Token => yaml.push_str(&format!(
            "auth:
  token:
    realm: {realm}
    service: {TOKEN_SERVICE}
    issuer: {TOKEN_ISSUER}
    rootcertbundle: {cert}
",
            realm = realm.expect("token realm"),
            cert = dir.join("cert.pem").display()
        )),
    }
    yaml
}

/// `user:$2y$...` (bcrypt, low cost: test credentials only).
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let salt: [u8; 16] =
        crate::Rng::from_label(&format!("htpasswd {user}")).bytes(16).try_into().expect("16 bytes");
    let hash = bcrypt::hash_with_salt(password, 4, salt).expect("bcrypt");
    format!("{user}:{}\n", hash.format_for_version(bcrypt::Version::TwoY))
}

/// The status code of a plain `GET` over a raw socket (no async runtime needed), or `None`.
pub(crate) fn http_status(addr: &str, path: &str) -> Option<u16> {
    let sock: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_line_verifies() {
        let line = htpasswd_line("alice", "s3cret");
        let (user, hash) = line.trim_end().split_once(':').unwrap();
        assert_eq!(user, "alice");
        assert!(hash.starts_with("$2y$04$"));
        assert!(bcrypt::verify("s3cret", hash).unwrap());
        assert!(!bcrypt::verify("wrong", hash).unwrap());
    }
}
