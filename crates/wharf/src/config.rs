//! `wharf serve` configuration: a TOML file, overridden by flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use wharf_oci::Platform;
use wharf_registry::{IndexPolicy, IndexRule, RegistryConfig, RepoPattern};
use wharf_server::TlsConfig;
use wharf_server::wharf_auth::{self, AuthConfig, Authority, Htpasswd, TokenKey, TokenSettings};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    #[serde(default)]
    pub index_policy: PolicyFile,
    /// URL prefixes that foreign (non-distributable) layers may point at.
    #[serde(default)]
    pub foreign_layer_urls: Vec<String>,
    /// Abandoned uploads are removed after this many hours (default 24).
    pub upload_expiry_hours: Option<u64>,
    /// Run garbage collection (grace period 1 h) every this many minutes inside `wharf serve`;
    /// absent or 0: never (run `wharf gc` instead).
    pub gc_interval_minutes: Option<u64>,
    /// Upstreams that fill absent manifests and blobs on demand (and, with `proxy_tags`, serve
    /// tags: pull-through).
    #[serde(default)]
    pub upstreams: Vec<crate::upstream::UpstreamFile>,
    /// The registry's own scheduled mirrors (see `crate::mirrors`).
    #[serde(default)]
    pub mirrors: Vec<wharf_sync::MirrorSpec>,
    /// `[[trust]]`: repositories that serve only images whose cosign signature verifies.
    #[serde(default)]
    pub trust: Vec<TrustFile>,
    /// Authentication and permissions; absent: everyone has full access, anonymously.
    pub auth: Option<AuthFile>,
    /// Serve HTTPS; absent: plain HTTP.
    pub tls: Option<TlsFile>,
    /// Where blobs live; absent: files under `data_dir`.
    pub storage: Option<StorageFile>,
    /// `[[webhooks]]`: notifications of pushes, deletes and mirror runs.
    #[serde(default)]
    pub webhooks: Vec<WebhookFile>,
    /// `[limits]`: connections and client timeouts; absent: the defaults of `wharf_server::Limits`.
    pub limits: Option<crate::serve::LimitsFile>,
}

/// `[[webhooks]]`: where events are POSTed (distribution's notification envelope).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub url: String,
    /// Any of "push", "delete", "mirror_run".
    pub events: Vec<String>,
    /// Signs each body: `X-Wharf-Signature-256: sha256=<hex HMAC-SHA256>`.
    pub secret: Option<String>,
    /// Only repositories matching this pattern (for mirror_run: the mirror's dest).
    pub pattern: Option<String>,
}

impl std::fmt::Debug for WebhookFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookFile")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("pattern", &self.pattern)
            .finish()
    }
}

/// The `[[webhooks]]`, checked: an http(s) URL, used once; known events, at least one.
pub fn webhooks(file: &ServerFile) -> anyhow::Result<Vec<wharf_registry::Webhook>> {
    let mut seen = std::collections::HashSet::new();
    let mut hooks = Vec::new();
    for (i, w) in file.webhooks.iter().enumerate() {
        let at = || format!("webhooks[{i}] (url {:?})", w.url);
        if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
            bail!("{}: url must start with http:// or https://", at());
        }
        if !seen.insert(w.url.as_str()) {
            bail!("{}: a second webhook with this url: urls must be unique", at());
        }
        if w.events.is_empty() {
            bail!("{}: events is empty: list any of \"push\", \"delete\", \"mirror_run\"", at());
        }
        let events = w
            .events
            .iter()
            .map(|e| e.parse::<wharf_registry::EventKind>().map_err(|m| anyhow!("{}: events: {m}", at())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if w.secret.as_deref() == Some("") {
            bail!("{}: secret is empty: remove it, or set one", at());
        }
        hooks.push(wharf_registry::Webhook {
            url: w.url.clone(),
            events,
            secret: w.secret.clone(),
            pattern: w.pattern.as_deref().map(RepoPattern::new),
        });
    }
    Ok(hooks)
}

/// `[storage]`: the filesystem (default) or an S3-compatible bucket shared by every replica.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// "filesystem" (default) or "s3".
    pub kind: Option<String>,
    pub bucket: Option<String>,
    /// Any S3-compatible service (path-style requests); absent: AWS.
    pub endpoint: Option<String>,
    /// [default: us-east-1]; Garage wants its `s3_region`.
    pub region: Option<String>,
    /// Key prefix inside the bucket.
    pub prefix: Option<String>,
    /// [default: $AWS_ACCESS_KEY_ID]
    pub access_key_id: Option<String>,
    /// [default: $AWS_SECRET_ACCESS_KEY]
    pub secret_access_key: Option<String>,
    /// Answer blob GETs with `307` to a presigned URL of the object store.
    #[serde(default)]
    pub redirect: bool,
}

impl std::fmt::Debug for StorageFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageFile")
            .field("kind", &self.kind)
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("redirect", &self.redirect)
            .finish()
    }
}

impl StorageFile {
    /// The bucket settings for `kind = "s3"`; `None` for the filesystem.
    pub fn s3_config(&self) -> anyhow::Result<Option<wharf_storage::S3Config>> {
        match self.kind.as_deref() {
            None | Some("filesystem") => {
                if self.bucket.is_some() || self.endpoint.is_some() {
                    bail!("[storage] names a bucket or endpoint but not kind = \"s3\"");
                }
                Ok(None)
            }
            Some("s3") => {
                let bucket = self
                    .bucket
                    .clone()
                    .filter(|b| !b.is_empty())
                    .context("[storage] kind = \"s3\" needs `bucket`")?;
                let from_env = |v: &Option<String>, var: &str| {
                    v.clone().or_else(|| std::env::var(var).ok()).filter(|s| !s.is_empty())
                };
                let access_key_id = from_env(&self.access_key_id, "AWS_ACCESS_KEY_ID")
                    .context("[storage] needs `access_key_id` (or $AWS_ACCESS_KEY_ID)")?;
                let secret_access_key = from_env(&self.secret_access_key, "AWS_SECRET_ACCESS_KEY")
                    .context("[storage] needs `secret_access_key` (or $AWS_SECRET_ACCESS_KEY)")?;
                if let Some(endpoint) = &self.endpoint
                    && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                {
                    bail!("[storage] endpoint {endpoint:?} must start with http:// or https://");
                }
                Ok(Some(wharf_storage::S3Config {
                    bucket,
                    endpoint: self.endpoint.clone(),
                    region: self.region.clone().unwrap_or_else(|| "us-east-1".into()),
                    prefix: self.prefix.clone().unwrap_or_default(),
                    access_key_id,
                    secret_access_key,
                    redirect: self.redirect,
                }))
            }
            Some(other) => bail!("[storage] kind {other:?} is unknown: use \"filesystem\" or \"s3\""),
        }
    }
}

/// `[tls]`: PEM files (`--tls-cert`, `--tls-key` override them).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The server certificate, then any intermediates.
    pub cert: Option<PathBuf>,
    /// Its private key (PKCS#8, PKCS#1 RSA or SEC1 EC), unencrypted.
    pub key: Option<PathBuf>,
}

/// `[auth]`.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Users: an htpasswd file with bcrypt hashes (`htpasswd -B`).
    pub htpasswd: Option<PathBuf>,
    /// The Docker token flow (Bearer challenges, `/token`) instead of basic auth.
    #[serde(default)]
    pub token: bool,
    /// The advertised token endpoint [default: `http://<Host of the request>/token`].
    pub realm: Option<String>,
    /// `service` of challenges and tokens [default: "wharf"].
    pub service: Option<String>,
    /// Secret that signs tokens [default: random at each start].
    pub token_key: Option<String>,
    /// An external token service, as distribution's `auth: token`: the `iss` of its tokens.
    pub token_issuer: Option<String>,
    /// The `service` (`aud`) its tokens are for [default: `service`, else "wharf"].
    pub token_service: Option<String>,
    /// Where clients get its tokens (the `realm` of challenges).
    pub token_realm: Option<String>,
    /// Its public keys: PEM certificates or public keys (bundles too), or JWKS files.
    #[serde(default)]
    pub token_keys: Vec<PathBuf>,
    /// Proxies whose `X-Forwarded-For` names the client the login throttle counts.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// First matching pattern wins; no match = no access.
    #[serde(default)]
    pub rules: Vec<AuthRuleFile>,
    /// Users and groups from an LDAP directory, beside (after) or instead of htpasswd.
    pub ldap: Option<LdapFile>,
}

/// `[auth.ldap]`: see `wharf_auth::LdapConfig`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapFile {
    /// `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]`.
    pub url: String,
    /// Upgrade `ldap://` with StartTLS [default: false].
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA certificates for ldaps/StartTLS [default: the system's roots].
    pub ca_file: Option<PathBuf>,
    /// The search account [default: anonymous search].
    pub bind_dn: Option<String>,
    pub bind_password: Option<String>,
    /// A file holding the password instead (its first line), to keep it out of this file.
    pub bind_password_file: Option<PathBuf>,
    pub user_base: String,
    /// [default: "(uid={username})"]; Active Directory: "(sAMAccountName={username})".
    pub user_filter: Option<String>,
    /// Absent: users are in no group.
    pub group_base: Option<String>,
    /// [default: "(member={dn})"]; `{dn}` is the user's entry.
    pub group_filter: Option<String>,
    /// What `group:NAME` names [default: "cn"].
    pub group_attribute: Option<String>,
    /// The longest a login may take [default: "5s"].
    pub timeout: Option<String>,
}

impl std::fmt::Debug for LdapFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapFile")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &self.bind_password.as_ref().map(|_| "<redacted>"))
            .field("bind_password_file", &self.bind_password_file)
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .field("group_base", &self.group_base)
            .field("group_filter", &self.group_filter)
            .field("group_attribute", &self.group_attribute)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl std::fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthFile")
            .field("htpasswd", &self.htpasswd)
            .field("token", &self.token)
            .field("realm", &self.realm)
            .field("service", &self.service)
            .field("token_key", &self.token_key.as_ref().map(|_| "<redacted>"))
            .field("token_issuer", &self.token_issuer)
            .field("token_service", &self.token_service)
            .field("token_realm", &self.token_realm)
            .field("token_keys", &self.token_keys)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("rules", &self.rules)
            .field("ldap", &self.ldap)
            .finish()
    }
}

/// `[[auth.rules]]`: who may pull, push and delete in repositories matching `pattern`.
/// Entries: `"*"` (anyone, anonymous included), `"authenticated"` (any user), or user names.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRuleFile {
    pub pattern: String,
    #[serde(default)]
    pub pull: Vec<String>,
    #[serde(default)]
    pub push: Vec<String>,
    #[serde(default)]
    pub delete: Vec<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub default: Option<String>,
    #[serde(default)]
    pub repositories: Vec<RepoRuleFile>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoRuleFile {
    pub pattern: String,
    pub policy: Option<String>,
    pub require: Option<Vec<String>>,
}

impl ServerFile {
    pub fn load(path: &Path) -> anyhow::Result<ServerFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
    }
}

pub fn parse_rule(policy: Option<&str>, require: Option<&[String]>) -> anyhow::Result<IndexRule> {
    if let Some(require) = require {
        if policy == Some("complete") {
            bail!(
                "`require` lists platforms that may be the only ones present; it cannot go with policy = \"complete\""
            );
        }
        let platforms = require
            .iter()
            .map(|p| p.parse::<Platform>().map_err(anyhow::Error::from))
            .collect::<anyhow::Result<Vec<_>>>()?;
        return Ok(IndexRule::Require(platforms));
    }
    match policy {
        None | Some("complete") => Ok(IndexRule::Complete),
        Some("sparse") => Ok(IndexRule::Sparse),
        Some(other) => {
            bail!("index policy {other:?} is unknown: use \"complete\" or \"sparse\", or a `require` list")
        }
    }
}

/// Build the registry settings from the file and the `--index-policy` flag.
pub fn registry_config(file: &ServerFile, default_policy: Option<&str>) -> anyhow::Result<RegistryConfig> {
    let default = parse_rule(default_policy.or(file.index_policy.default.as_deref()), None)
        .context("index_policy.default")?;
    let mut repositories = Vec::new();
    for (i, r) in file.index_policy.repositories.iter().enumerate() {
        let rule = parse_rule(r.policy.as_deref(), r.require.as_deref())
            .with_context(|| format!("index_policy.repositories[{i}] (pattern {:?})", r.pattern))?;
        repositories.push((RepoPattern::new(&r.pattern), rule));
    }
    Ok(RegistryConfig {
        index_policy: IndexPolicy { default, repositories },
        foreign_layer_urls: file.foreign_layer_urls.clone(),
        upstreams: crate::upstream::upstream_rules(&file.upstreams)?,
        trust: trust_rules(&file.trust)?,
        webhooks: webhooks(file)?,
        max_blob_bytes: file.limits.as_ref().and_then(|l| l.max_blob_bytes),
    })
}

/// One `[[trust]]` entry: a pull in a repository matching `pattern` is refused unless the
/// manifest (or the index that lists it) carries a cosign signature that verifies under one
/// of `keys` (PEM public key files, as cosign.pub).
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    pub pattern: String,
    pub keys: Vec<PathBuf>,
}

fn trust_rules(entries: &[TrustFile]) -> anyhow::Result<Vec<wharf_registry::TrustRule>> {
    let mut rules = Vec::new();
    for (i, t) in entries.iter().enumerate() {
        let at = || format!("trust[{i}] (pattern {:?})", t.pattern);
        if t.keys.is_empty() {
            bail!("{}: keys is empty: name at least one public key file", at());
        }
        let mut keys = Vec::new();
        for path in &t.keys {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: reading key file {}", at(), path.display()))?;
            keys.push(
                wharf_trust::PublicKey::from_pem(&text)
                    .with_context(|| format!("{}: key file {}", at(), path.display()))?,
            );
        }
        rules.push(wharf_registry::TrustRule {
            pattern: RepoPattern::new(&t.pattern),
            keys: std::sync::Arc::new(keys),
        });
    }
    Ok(rules)
}

/// The `[[mirrors]]`, checked: unique names, a valid `dest` repository, a parseable
/// `interval`, valid selection fields.
pub fn mirror_specs(file: &ServerFile) -> anyhow::Result<Vec<wharf_sync::MirrorSpec>> {
    let mut seen = std::collections::HashSet::new();
    for (i, m) in file.mirrors.iter().enumerate() {
        m.validate().with_context(|| format!("mirrors[{i}]"))?;
        if !seen.insert(m.name.as_str()) {
            bail!("mirrors[{i}]: a second mirror named {:?}: names must be unique", m.name);
        }
    }
    Ok(file.mirrors.clone())
}

/// The TLS certificate and key from `[tls]` and the flags (flags win), read and checked.
/// `None`: plain HTTP.
pub fn tls_config(
    file: &ServerFile,
    cert_flag: Option<&Path>,
    key_flag: Option<&Path>,
) -> anyhow::Result<Option<TlsConfig>> {
    let from_file = file.tls.as_ref();
    let cert = cert_flag.or(from_file.and_then(|t| t.cert.as_deref()));
    let key = key_flag.or(from_file.and_then(|t| t.key.as_deref()));
    match (cert, key) {
        (None, None) if from_file.is_none() => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(TlsConfig::from_pem_files(cert, key)?)),
        (None, _) => bail!("TLS needs a certificate: set [tls] cert or --tls-cert (PEM file)"),
        (_, None) => bail!("TLS needs the certificate's private key: set [tls] key or --tls-key (PEM file)"),
    }
}

/// A value that goes inside a quoted `WWW-Authenticate` parameter.
fn check_quotable(what: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty() || value.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        bail!("auth.{what} {value:?} must be non-empty, without quotes, backslashes or control characters");
    }
    Ok(())
}

/// Build the authentication settings from `[auth]` (reading the htpasswd file).
/// `None`: no `[auth]` section.
pub fn auth_config(file: &ServerFile) -> anyhow::Result<Option<AuthConfig>> {
    let Some(a) = &file.auth else { return Ok(None) };
    let htpasswd = match &a.htpasswd {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading auth.htpasswd {}", path.display()))?;
            Some(Htpasswd::parse(&text).with_context(|| format!("auth.htpasswd {}", path.display()))?)
        }
        None => None,
    };
    let rules = a
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            wharf_auth::Rule::new(&r.pattern, &r.pull, &r.push, &r.delete)
                .map_err(|e| anyhow!("auth.rules[{i}] (pattern {:?}): {e}", r.pattern))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let external = external_issuer(a)?;
    let token = if a.token || external.is_some() {
        let mut t = TokenSettings::new();
        let service = one_of("service", &a.service, "token_service", &a.token_service)?;
        if let Some((name, service)) = service {
            check_quotable(name, service)?;
            t.service = service.clone();
        }
        let realm = one_of("realm", &a.realm, "token_realm", &a.token_realm)?;
        if let Some((name, realm)) = realm {
            check_quotable(name, realm)?;
            if !(realm.starts_with("http://") || realm.starts_with("https://")) {
                bail!("auth.{name} {realm:?} must be the token endpoint's http:// or https:// URL");
            }
            t.realm = Some(realm.clone());
        } else if !a.token {
            bail!(
                "auth.token_realm is needed with token_keys: the URL where clients get the external service's tokens"
            );
        }
        t.external = external;
        // Without `token = true` only the external service issues tokens.
        t.builtin_issuer = a.token;
        if !a.token && a.token_key.is_some() {
            bail!("auth.token_key signs the built-in issuer's tokens: add `token = true` or remove it");
        }
        if let Some(secret) = &a.token_key {
            t.key = TokenKey::from_secret(secret).map_err(|e| anyhow!("auth.{e}"))?;
            t.key_configured = true;
        }
        Some(t)
    } else {
        for (name, set) in [
            ("realm", a.realm.is_some()),
            ("service", a.service.is_some()),
            ("token_key", a.token_key.is_some()),
        ] {
            if set {
                bail!("auth.{name} is only used by the token flow: add `token = true` or remove it");
            }
        }
        None
    };
    Ok(Some(AuthConfig { htpasswd, rules, token }))
}

/// The [`Authority`] of `[auth]`, with its `[auth.ldap]` directory. `None`: no `[auth]`.
pub fn authority(file: &ServerFile) -> anyhow::Result<Option<Authority>> {
    let Some(config) = auth_config(file)? else { return Ok(None) };
    let mut authority = Authority::new(config).with_login_limits(login_limits(file));
    if let Some(l) = file.auth.as_ref().and_then(|a| a.ldap.as_ref()) {
        authority = authority.with_directory(ldap_directory(l)?);
    }
    Ok(Some(authority))
}

fn ldap_directory(l: &LdapFile) -> anyhow::Result<wharf_auth::Directory> {
    let mut c = wharf_auth::LdapConfig::new(&l.url, &l.user_base);
    c.starttls = l.starttls;
    c.ca_file = l.ca_file.clone();
    c.bind_dn = l.bind_dn.clone().unwrap_or_default();
    c.bind_password = match (&l.bind_password, &l.bind_password_file) {
        (Some(_), Some(_)) => bail!("auth.ldap: set bind_password or bind_password_file, not both"),
        (Some(p), None) => p.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading auth.ldap.bind_password_file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
        (None, None) => String::new(),
    };
    if let Some(f) = &l.user_filter {
        c.user_filter = f.clone();
    }
    c.group_base = l.group_base.clone();
    if let Some(f) = &l.group_filter {
        c.group_filter = f.clone();
    }
    if let Some(a) = &l.group_attribute {
        c.group_attribute = a.clone();
    }
    if let Some(t) = &l.timeout {
        c.timeout = wharf_sync::parse_duration(t).map_err(|e| anyhow!("auth.ldap.timeout: {e}"))?;
    }
    Ok(wharf_auth::Directory::new(c)?)
}

/// The login throttle's limits: the defaults, with `[auth] trusted_proxies`.
pub fn login_limits(file: &ServerFile) -> wharf_auth::LoginLimits {
    let trusted_proxies = file.auth.as_ref().map(|a| a.trusted_proxies.clone()).unwrap_or_default();
    wharf_auth::LoginLimits { trusted_proxies, ..Default::default() }
}

/// A value set under either of two names (`service` / `token_service`): at most one value.
fn one_of<'a>(
    a: &'static str,
    va: &'a Option<String>,
    b: &'static str,
    vb: &'a Option<String>,
) -> anyhow::Result<Option<(&'static str, &'a String)>> {
    match (va, vb) {
        (Some(x), Some(y)) if x != y => bail!("auth.{a} {x:?} and auth.{b} {y:?} differ: set one of them"),
        (_, Some(y)) => Ok(Some((b, y))),
        (Some(x), None) => Ok(Some((a, x))),
        (None, None) => Ok(None),
    }
}

/// `token_issuer` and `token_keys` (read and parsed now): an external token service.
fn external_issuer(a: &AuthFile) -> anyhow::Result<Option<wharf_auth::ExternalIssuer>> {
    match (&a.token_issuer, a.token_keys.is_empty()) {
        (None, true) => {
            for (name, set) in
                [("token_realm", a.token_realm.is_some()), ("token_service", a.token_service.is_some())]
            {
                if set && !a.token {
                    bail!(
                        "auth.{name} is for an external token service: set token_issuer and token_keys too"
                    );
                }
            }
            Ok(None)
        }
        (None, false) => {
            bail!("auth.token_keys needs auth.token_issuer: the `iss` of the external service's tokens")
        }
        (Some(_), true) => {
            bail!("auth.token_issuer needs auth.token_keys: the external service's public keys")
        }
        (Some(issuer), false) => {
            if issuer.is_empty() {
                bail!("auth.token_issuer must not be empty");
            }
            let mut keys = Vec::new();
            for path in &a.token_keys {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading auth.token_keys {}", path.display()))?;
                let name = path.display().to_string();
                keys.extend(
                    wharf_auth::PublicKey::parse_file(&text, &name)
                        .map_err(|e| anyhow!("auth.token_keys {e}"))?,
                );
            }
            Ok(Some(wharf_auth::ExternalIssuer { issuer: issuer.clone(), keys }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_design_example() {
        let file: ServerFile = toml::from_str(
            r#"
            addr = "127.0.0.1:5000"
            data_dir = "./wharf-data"
            [index_policy]
            default = "complete"
            [[index_policy.repositories]]
            pattern = "mirror/**"
            policy = "sparse"
            [[index_policy.repositories]]
            pattern = "prod/**"
            require = ["linux/amd64", "linux/arm64"]
            "#,
        )
        .unwrap();
        let cfg = registry_config(&file, None).unwrap();
        let p = &cfg.index_policy;
        assert_eq!(p.rule_for(&"mirror/x".parse().unwrap()), &IndexRule::Sparse);
        assert!(matches!(p.rule_for(&"prod/x".parse().unwrap()), IndexRule::Require(v) if v.len() == 2));
        assert_eq!(p.rule_for(&"other".parse().unwrap()), &IndexRule::Complete);
        let overridden = registry_config(&file, Some("sparse")).unwrap();
        assert_eq!(overridden.index_policy.default, IndexRule::Sparse);
    }

    #[test]
    fn reads_and_checks_mirrors() {
        let file: ServerFile = toml::from_str(
            r#"
            [[mirrors]]
            name = "vendor-app"
            source = "docker://registry.vendor.example/team/app"
            tags_semver = ">=1.2, <2"
            platforms = ["linux/amd64", "linux/arm64"]
            dest = "mirror/team/app"
            interval = "30m"
            credentials = "user:password"
            tls_verify = true
            cert_dir = "/etc/wharf/vendor-ca"
            "#,
        )
        .unwrap();
        let specs = mirror_specs(&file).unwrap();
        assert_eq!(specs[0].interval().unwrap(), std::time::Duration::from_secs(1800));
        assert!(!format!("{file:?}").contains("user:password"), "Debug shows no secret");

        let bad = |text: &str| mirror_specs(&toml::from_str(text).unwrap()).unwrap_err();
        let one = "name = \"a\"\ninterval = \"1h\"\nsource = \"docker://h.io/x\"\ntags = [\"v1\"]\n";
        let e = bad(&format!("[[mirrors]]\n{one}dest = \"m/x\"\n[[mirrors]]\n{one}dest = \"m/y\"\n"));
        assert!(e.to_string().contains("unique"), "{e:#}");
        let e = bad(&format!("[[mirrors]]\n{one}dest = \"M/X\"\n"));
        assert!(format!("{e:#}").contains("dest"), "{e:#}");
        let e = bad(&format!("[[mirrors]]\n{}dest = \"m/x\"\n", one.replace("1h", "often")));
        assert!(format!("{e:#}").contains("interval"), "{e:#}");
        // verify_key is read when the config is checked: a key that is not there, or not a
        // public key, stops the start naming the mirror and the file.
        let e = bad(&format!("[[mirrors]]\n{one}dest = \"m/x\"\nverify_key = \"/nonexistent/vendor.pub\"\n"));
        assert!(format!("{e:#}").contains("/nonexistent/vendor.pub"), "{e:#}");
    }

    #[test]
    fn reads_and_checks_trust_rules() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("vendor.pub");
        // A P-256 key as `cosign generate-key-pair` writes cosign.pub.
        std::fs::write(
            &good,
            "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEb0BQ5rNplij8lAVRAJOV1mtuxZaD\n\
             fFxS7rlAqsx0XZ8xIb/iVpsN52WN5PVJv/b9XdmihpisCBqrVbv/FVio7g==\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "not a key").unwrap();
        let config = |keys: &str| {
            let file: ServerFile =
                toml::from_str(&format!("[[trust]]\npattern = \"prod/**\"\nkeys = {keys}\n")).unwrap();
            registry_config(&file, None)
        };
        let c = config(&format!("[{:?}]", good.to_str().unwrap())).unwrap();
        assert_eq!(c.trust.len(), 1);
        assert!(c.trust[0].pattern.matches(&"prod/team/app".parse().unwrap()));
        for (keys, needle) in [
            ("[]".to_owned(), "keys is empty"),
            (format!("[{:?}]", junk.to_str().unwrap()), "malformed public key"),
            ("[\"/nonexistent/k.pub\"]".to_owned(), "reading key file /nonexistent/k.pub"),
        ] {
            let e = format!("{:#}", config(&keys).unwrap_err());
            assert!(e.contains("trust[0]") && e.contains(needle), "{keys}: {e}");
        }
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse_rule(Some("partial"), None).is_err());
        assert!(parse_rule(Some("complete"), Some(&["linux/amd64".into()])).is_err());
        assert!(parse_rule(None, Some(&["linux".into()])).is_err());
        assert!(toml::from_str::<ServerFile>("adr = \"x\"").is_err());
    }

    #[test]
    fn reads_the_auth_section() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, wharf_testkit::htpasswd_line("ci", "pw")).unwrap();
        let text = format!(
            r#"
            [auth]
            htpasswd = "{}"
            token = true
            token_key = "0123456789abcdef0123456789abcdef"
            [[auth.rules]]
            pattern = "mirror/**"
            pull = ["*"]
            push = ["ci"]
            delete = ["admin"]
            "#,
            htpasswd.display()
        );
        let file: ServerFile = toml::from_str(&text).unwrap();
        assert!(!format!("{file:?}").contains("0123456789abcdef"), "Debug shows no secret");
        let cfg = auth_config(&file).unwrap().unwrap();
        assert_eq!(cfg.rules.len(), 1);
        let t = cfg.token.as_ref().unwrap();
        assert!(t.key_configured);
        assert_eq!(t.service, "wharf");
        assert_eq!(t.realm, None);
        let authority = wharf_auth::Authority::new(cfg);
        assert!(authority.login("ci", "pw").is_some());
        // admin is not in the file, and realm is not set: warnings, not errors.
        let warnings = authority.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[1].contains("auth.realm is not set"), "{warnings:?}");

        // No [auth]: nothing to build.
        assert!(auth_config(&ServerFile::default()).unwrap().is_none());
    }

    #[test]
    fn reads_the_tls_section_and_flags() {
        let file: ServerFile =
            toml::from_str("[tls]\ncert = \"/etc/wharf/cert.pem\"\nkey = \"/etc/wharf/key.pem\"").unwrap();
        let tls = file.tls.as_ref().unwrap();
        assert_eq!(tls.cert.as_deref(), Some(Path::new("/etc/wharf/cert.pem")));
        assert_eq!(tls.key.as_deref(), Some(Path::new("/etc/wharf/key.pem")));
        assert!(toml::from_str::<ServerFile>("[tls]\ncertificate = \"x\"").is_err());

        let none = ServerFile::default();
        assert!(tls_config(&none, None, None).unwrap().is_none());
        let err = |file: &ServerFile, c: Option<&str>, k: Option<&str>| {
            tls_config(file, c.map(Path::new), k.map(Path::new)).unwrap_err().to_string()
        };
        assert!(err(&none, Some("c.pem"), None).contains("--tls-key"));
        assert!(err(&none, None, Some("k.pem")).contains("--tls-cert"));
        let empty: ServerFile = toml::from_str("[tls]").unwrap();
        assert!(err(&empty, None, None).contains("[tls] cert"));
        // The flags win over the file: the flag's path is the one read.
        let e = err(&file, Some("/nonexistent/flag-cert.pem"), None);
        assert!(e.contains("/nonexistent/flag-cert.pem") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn reads_an_external_token_service() {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let ok =
                std::process::Command::new("openssl").args(args).current_dir(dir.path()).status().unwrap();
            assert!(ok.success(), "openssl {args:?}");
        };
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k.pem"]);
        openssl(&[
            "req", "-x509", "-new", "-key", "k.pem", "-subj", "/CN=auth", "-days", "1", "-out", "c.pem",
        ]);
        let cert = dir.path().join("c.pem");
        let section = |extra: &str| {
            format!(
                "[auth]\ntoken_issuer = \"auth.example.org\"\ntoken_service = \"registry.example.org\"\n\
                 token_keys = [\"{}\"]\n{extra}",
                cert.display()
            )
        };
        let build = |text: &str| auth_config(&toml::from_str::<ServerFile>(text).unwrap());
        let cfg = build(&section("token_realm = \"https://auth.example.org/token\"")).unwrap().unwrap();
        let t = cfg.token.as_ref().unwrap();
        assert_eq!(t.service, "registry.example.org");
        assert_eq!(t.realm.as_deref(), Some("https://auth.example.org/token"));
        assert!(!t.builtin_issuer, "only the external service issues tokens");
        let ext = t.external.as_ref().unwrap();
        assert_eq!((ext.issuer.as_str(), ext.keys.len()), ("auth.example.org", 1));
        // With `token = true` the built-in issuer runs beside it (and the realm may default).
        let cfg = build(&section("token = true")).unwrap().unwrap();
        assert!(cfg.token.as_ref().unwrap().builtin_issuer);

        let bad = |text: &str| build(text).unwrap_err().to_string();
        assert!(bad(&section("")).contains("token_realm is needed"));
        assert!(
            bad(&section("token_realm = \"https://a/token\"\nrealm = \"https://b/token\""))
                .contains("differ")
        );
        assert!(bad("[auth]\ntoken_issuer = \"x\"").contains("token_keys"));
        assert!(bad("[auth]\ntoken_keys = [\"/nonexistent\"]").contains("token_issuer"));
        assert!(bad("[auth]\ntoken_realm = \"https://a/token\"").contains("token_issuer"));
        let missing = section("token_realm = \"https://a/token\"").replace("c.pem", "missing.pem");
        assert!(bad(&missing).contains("missing.pem"));
        let private = section("token_realm = \"https://a/token\"").replace("c.pem", "k.pem");
        assert!(bad(&private).contains("private key"), "{}", bad(&private));
    }

    #[test]
    fn rejects_bad_auth_sections() {
        let bad = |text: &str| {
            let file: ServerFile = toml::from_str(text).unwrap();
            auth_config(&file).unwrap_err().to_string()
        };
        assert!(bad("[auth]\nhtpasswd = \"/nonexistent/htpasswd\"").contains("/nonexistent/htpasswd"));
        assert!(bad("[auth]\ntoken = true\ntoken_key = \"short\"").contains("at least 32"));
        assert!(bad("[auth]\ntoken_key = \"0123456789abcdef0123456789abcdef\"").contains("token = true"));
        assert!(bad("[auth]\ntoken = true\nrealm = \"registry.example.com/token\"").contains("http"));
        assert!(bad("[auth]\ntoken = true\nservice = \"a\\\"b\"").contains("quotes"));
        assert!(bad("[[auth.rules]]\npattern = \"x\"\npush = [\"a b\"]").contains("auth.rules[0]"));
        assert!(toml::from_str::<ServerFile>("[auth]\ntokens = true").is_err());
    }

    #[test]
    fn reads_the_ldap_section() {
        let text = r#"
            [auth]
            [auth.ldap]
            url = "ldap://127.0.0.1:3389"
            bind_dn = "cn=wharf,ou=services,dc=example,dc=org"
            bind_password = "s3cret-bind"
            user_base = "ou=people,dc=example,dc=org"
            group_base = "ou=groups,dc=example,dc=org"
            timeout = "2s"
            [[auth.rules]]
            pattern = "platform/**"
            pull = ["authenticated"]
            push = ["group:platform", "alice"]
        "#;
        let file: ServerFile = toml::from_str(text).unwrap();
        assert!(!format!("{file:?}").contains("s3cret-bind"), "Debug shows no secret");
        let auth = authority(&file).unwrap().unwrap();
        let d = auth.directory().unwrap().config();
        assert_eq!(d.timeout, std::time::Duration::from_secs(2));
        assert_eq!((d.user_filter.as_str(), d.group_filter.as_str()), ("(uid={username})", "(member={dn})"));
        assert_eq!(d.group_attribute, "cn");
        // Users named in rules may be directory users: no warning.
        assert!(auth.warnings().is_empty(), "{:?}", auth.warnings());

        let bad = |extra: &str| {
            let text = format!("[auth.ldap]\nuser_base = \"dc=x\"\n{extra}");
            authority(&toml::from_str(&text).unwrap()).unwrap_err().to_string()
        };
        assert!(bad("url = \"ldap://x\"\ntimeout = \"soon\"").contains("auth.ldap.timeout"));
        assert!(bad("url = \"x.example.org\"").contains("auth.ldap.url"));
        let e = bad("url = \"ldap://x\"\nbind_dn = \"cn=a\"\nbind_password_file = \"/nonexistent/pw\"");
        assert!(e.contains("/nonexistent/pw"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\n").unwrap();
        let text = format!(
            "[auth.ldap]\nurl = \"ldap://x\"\nuser_base = \"dc=x\"\nbind_dn = \"cn=a\"\nbind_password_file = \"{}\"",
            pw.display()
        );
        let auth = authority(&toml::from_str(&text).unwrap()).unwrap().unwrap();
        assert_eq!(auth.directory().unwrap().config().bind_password, "from-file");
        let e = bad("url = \"ldap://x\"\nuser_filter = \"(uid=x)\"");
        assert!(e.contains("{username}"), "{e}");
        assert!(
            toml::from_str::<ServerFile>(
                "[auth.ldap]\nurl = \"ldap://x\"\nuser_base = \"dc=x\"\nbase = \"x\""
            )
            .is_err()
        );
        // Group rules without a directory that lists groups: a warning.
        let file: ServerFile =
            toml::from_str("[[auth.rules]]\npattern = \"a/**\"\npull = [\"group:platform\"]").unwrap();
        let w = authority(&file).unwrap().unwrap().warnings();
        assert!(w.iter().any(|w| w.contains("group \"platform\"")), "{w:?}");
    }
}
