//! Registry credentials and where containers tools and docker keep them.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::ClientError;

/// A user name and password (or token) for one registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials { username: username.into(), password: password.into() }
    }

    /// Parse `USER:PASSWORD` (the `--creds` syntax of skopeo); the password may contain `:`.
    pub fn parse_user_pass(s: &str) -> Result<Self, ClientError> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials::new(u, p)),
            _ => Err(ClientError::Invalid("credentials must be given as USER:PASSWORD".to_owned())),
        }
    }

    /// The value of an `Authorization: Basic` header.
    pub(crate) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Credentials for `host` (`HOST[:PORT]`) from the usual places, first match wins:
/// `$REGISTRY_AUTH_FILE`, `${XDG_RUNTIME_DIR}/containers/auth.json`,
/// `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`, `${DOCKER_CONFIG:-~/.docker}/config.json`.
///
/// In each file: `credHelpers[host]`, then `auths[host]` (`auth` = base64 `user:pass`, or
/// `username`/`password`), then `credsStore`; helpers run as `docker-credential-<name> get`.
/// Keys match with or without `https://`/`http://` and a path; `docker.io`,
/// `index.docker.io`, `registry-1.docker.io` and `https://index.docker.io/v1/` are one host.
pub fn credentials_for(host: &str) -> Result<Option<Credentials>, ClientError> {
    credentials_in(host, &default_auth_files(), None)
}

/// The files [`credentials_for`] reads, in order (they need not exist).
pub fn default_auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = env("HOME");
    let mut files = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        files.push(f);
    }
    if let Some(d) = env("XDG_RUNTIME_DIR") {
        files.push(d.join("containers/auth.json"));
    }
    match (env("XDG_CONFIG_HOME"), &home) {
        (Some(d), _) => files.push(d.join("containers/auth.json")),
        (None, Some(h)) => files.push(h.join(".config/containers/auth.json")),
        _ => {}
    }
    match (env("DOCKER_CONFIG"), &home) {
        (Some(d), _) => files.push(d.join("config.json")),
        (None, Some(h)) => files.push(h.join(".docker/config.json")),
        _ => {}
    }
    files
}

/// [`credentials_for`] over explicit files; `helper_dir`, when set, is where
/// `docker-credential-*` programs are looked up instead of `PATH`.
pub fn credentials_in(
    host: &str,
    files: &[PathBuf],
    helper_dir: Option<&Path>,
) -> Result<Option<Credentials>, ClientError> {
    let want = normalize_host(host);
    for file in files {
        let text = match std::fs::read(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ClientError::Invalid(format!(
                    "cannot read credentials file {}: {e}",
                    file.display()
                )));
            }
        };
        let config: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
            // The serde error says where, not what: no secret is quoted.
            ClientError::Invalid(format!("credentials file {} is not valid JSON: {e}", file.display()))
        })?;
        if let Some(c) = lookup(&config, &want, file, helper_dir)? {
            tracing::debug!(host, file = %file.display(), "using stored credentials");
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn lookup(
    config: &serde_json::Value,
    want: &str,
    file: &Path,
    helper_dir: Option<&Path>,
) -> Result<Option<Credentials>, ClientError> {
    if let Some(helpers) = config.get("credHelpers").and_then(|v| v.as_object()) {
        for (key, helper) in helpers {
            if normalize_host(key) == want
                && let Some(name) = helper.as_str()
            {
                return run_helper(name, want, helper_dir);
            }
        }
    }
    if let Some(auths) = config.get("auths").and_then(|v| v.as_object()) {
        for (key, entry) in auths {
            if normalize_host(key) != want {
                continue;
            }
            if let Some(c) = entry_credentials(entry, key, file)? {
                return Ok(Some(c));
            }
        }
    }
    if let Some(store) = config.get("credsStore").and_then(|v| v.as_str())
        && !store.is_empty()
    {
        return run_helper(store, want, helper_dir);
    }
    Ok(None)
}

fn entry_credentials(
    entry: &serde_json::Value,
    key: &str,
    file: &Path,
) -> Result<Option<Credentials>, ClientError> {
    if let Some(auth) = entry.get("auth").and_then(|v| v.as_str()).filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        let Some(decoded) = decoded else {
            return Err(ClientError::Invalid(format!(
                "the \"auth\" entry for {key} in {} is not base64 of USER:PASSWORD",
                file.display()
            )));
        };
        return match decoded.split_once(':') {
            Some((u, p)) => Ok(Some(Credentials::new(u, p))),
            None => Err(ClientError::Invalid(format!(
                "the \"auth\" entry for {key} in {} has no ':' between user and password",
                file.display()
            ))),
        };
    }
    let user = entry.get("username").and_then(|v| v.as_str());
    let pass = entry.get("password").and_then(|v| v.as_str());
    match (user, pass) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials::new(u, p))),
        _ => Ok(None),
    }
}

/// `HOST[:PORT]` of a key such as `https://index.docker.io/v1/` or `reg:5000/ns`; docker.io
/// aliases become `docker.io`.
pub(crate) fn normalize_host(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let k = k.split('/').next().unwrap_or("").to_ascii_lowercase();
    match k.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_owned(),
        _ => k,
    }
}

#[derive(serde::Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Run `docker-credential-<name> get` with the server on stdin.
fn run_helper(name: &str, host: &str, helper_dir: Option<&Path>) -> Result<Option<Credentials>, ClientError> {
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(ClientError::Invalid(format!("invalid credential helper name {name:?}")));
    }
    let program = format!("docker-credential-{name}");
    let program = match helper_dir {
        Some(d) => d.join(&program),
        None => PathBuf::from(program),
    };
    // Docker stores Docker Hub under its v1 URL; others under the bare host.
    let server = if host == "docker.io" { "https://index.docker.io/v1/" } else { host };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ClientError::Invalid(format!("cannot run credential helper {}: {e}", program.display()))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is not an error here; its status tells.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if msg.to_ascii_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        // Helpers print errors, never the secret; still, keep only the first line.
        let first = msg.lines().next().unwrap_or("").trim().to_owned();
        return Err(ClientError::Invalid(format!(
            "credential helper {} failed for {host} ({}): {first}",
            program.display(),
            out.status
        )));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|_| {
        ClientError::Invalid(format!(
            "credential helper {} printed something other than {{\"Username\",\"Secret\"}} JSON",
            program.display()
        ))
    })?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials::new(answer.username, answer.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn debug_redacts_password() {
        let c = Credentials::new("alice", "hunter2");
        let d = format!("{c:?}");
        assert!(d.contains("alice"));
        assert!(!d.contains("hunter2"), "{d}");
        assert_eq!(Credentials::parse_user_pass("a:b:c").unwrap().password, "b:c");
        assert!(Credentials::parse_user_pass("nocolon").is_err());
    }

    #[test]
    fn normalizes_keys() {
        assert_eq!(normalize_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_host("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize_host("http://Reg.example:5000/v2/"), "reg.example:5000");
        assert_eq!(normalize_host("reg.example:5000"), "reg.example:5000");
    }

    #[test]
    fn reads_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("auth.json");
        let second = dir.path().join("config.json");
        std::fs::write(
            &first,
            format!(r#"{{"auths":{{"reg.example:5000":{{"auth":"{}"}}}}}}"#, b64("alice:pa:ss")),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},
                   "https://other.example":{{"username":"bob","password":"pw"}},
                   "reg.example:5000":{{"auth":"{}"}}}}}}"#,
                b64("hub:tok"),
                b64("never:used")
            ),
        )
        .unwrap();
        let files = vec![dir.path().join("missing.json"), first, second];
        let c = credentials_in("reg.example:5000", &files, None).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "pa:ss"));
        let c = credentials_in("docker.io", &files, None).unwrap().unwrap();
        assert_eq!(c.username, "hub");
        let c = credentials_in("index.docker.io", &files, None).unwrap().unwrap();
        assert_eq!(c.password, "tok");
        let c = credentials_in("other.example", &files, None).unwrap().unwrap();
        assert_eq!(c.username, "bob");
        assert!(credentials_in("nowhere.example", &files, None).unwrap().is_none());
    }

    #[test]
    fn bad_file_errors_without_secret() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths":{"h":{"auth":"!!!secret!!!"}}}"#).unwrap();
        let e = credentials_in("h", std::slice::from_ref(&f), None).unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
        std::fs::write(&f, "{not json").unwrap();
        assert!(credentials_in("h", &[f], None).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn credential_helpers() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // Answers for reg.example:5000 only, like the real helpers.
        let script = "#!/bin/sh\nread server\nif [ \"$server\" = reg.example:5000 ]; then\n  \
                      printf '{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}' \"$server\"\n\
                      else echo 'credentials not found in native keychain'; exit 1; fi\n";
        for name in ["docker-credential-fake", "docker-credential-store"] {
            let p = dir.path().join(name);
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let cfg = dir.path().join("config.json");
        std::fs::write(&cfg, r#"{"credHelpers":{"reg.example:5000":"fake"},"credsStore":"store"}"#).unwrap();
        let files = vec![cfg];
        let c = credentials_in("reg.example:5000", &files, Some(dir.path())).unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("helper-user", "helper-secret"));
        // Not in credHelpers: the credsStore is asked, and says "not found".
        assert!(credentials_in("other:1", &files, Some(dir.path())).unwrap().is_none());
        // A missing helper is an error naming it.
        std::fs::write(&files[0], r#"{"credsStore":"absent"}"#).unwrap();
        let e = credentials_in("x", &files, Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("docker-credential-absent"), "{e}");
    }
}
