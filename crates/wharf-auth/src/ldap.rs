//! Users and groups from an LDAP directory (OpenLDAP, Active Directory), through `ldap3`.
//!
//! A login: connect (`ldap://`, `ldaps://`, or `ldap://` then StartTLS), bind as the search
//! account, find the user's entry with `user_filter` under `user_base` (exactly one), bind as
//! that entry with the password, bind back as the search account and collect the names
//! (`group_attribute`) of the entries under `group_base` that `group_filter` matches.
//! `{username}` and `{dn}` are escaped per RFC 4515 before they go into a filter, so a user
//! name cannot widen a filter. An empty password is refused before anything is sent: LDAP
//! would take it as an unauthenticated bind, which succeeds.
//!
//! The whole login is bounded by `timeout`. A directory that is down, slow, refuses the search
//! account or answers with an error is a [`DirectoryError`] (the server answers 503), never a
//! refusal: an outage must not look like a wrong password, nor a wrong password like an outage.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, Scope, SearchEntry, SearchOptions};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// How long a whole login may take unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_USER_FILTER: &str = "(uid={username})";
pub const DEFAULT_GROUP_FILTER: &str = "(member={dn})";
pub const DEFAULT_GROUP_ATTRIBUTE: &str = "cn";

/// Result codes of a user's bind that mean "not this password" (RFC 4511): invalid
/// credentials, inappropriate authentication, insufficient access, unwilling to perform
/// (locked or disabled accounts). Any other code is the directory's problem.
const REFUSED_BIND: [u32; 4] = [49, 48, 50, 53];

/// `[auth.ldap]`.
#[derive(Clone)]
pub struct LdapConfig {
    /// `ldap://HOST[:PORT]` or `ldaps://HOST[:PORT]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    pub starttls: bool,
    /// PEM certificates to trust for ldaps/StartTLS instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The search account; empty: search anonymously.
    pub bind_dn: String,
    pub bind_password: String,
    pub user_base: String,
    /// Must hold `{username}`.
    pub user_filter: String,
    /// `None`: users are in no group.
    pub group_base: Option<String>,
    /// `{dn}`: the user's entry; `{username}`: the name as typed.
    pub group_filter: String,
    /// The attribute of a group entry that `group:NAME` rules name.
    pub group_attribute: String,
    pub timeout: Duration,
}

impl LdapConfig {
    /// A configuration with the default filters, attribute and timeout.
    pub fn new(url: impl Into<String>, user_base: impl Into<String>) -> LdapConfig {
        LdapConfig {
            url: url.into(),
            starttls: false,
            ca_file: None,
            bind_dn: String::new(),
            bind_password: String::new(),
            user_base: user_base.into(),
            user_filter: DEFAULT_USER_FILTER.into(),
            group_base: None,
            group_filter: DEFAULT_GROUP_FILTER.into(),
            group_attribute: DEFAULT_GROUP_ATTRIBUTE.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca_file", &self.ca_file)
            .field("bind_dn", &self.bind_dn)
            .field("bind_password", &"<redacted>")
            .field("user_base", &self.user_base)
            .field("user_filter", &self.user_filter)
            .field("group_base", &self.group_base)
            .field("group_filter", &self.group_filter)
            .field("group_attribute", &self.group_attribute)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// An `[auth.ldap]` setting that cannot work; `field` is its name in the section.
#[derive(Debug, thiserror::Error)]
#[error("auth.ldap.{field}: {message}")]
pub struct LdapConfigError {
    pub field: &'static str,
    pub message: String,
}

fn config_err(field: &'static str, message: impl Into<String>) -> LdapConfigError {
    LdapConfigError { field, message: message.into() }
}

/// The directory could not decide: the server answers 503, not 401.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the LDAP directory {url} did not answer within {}s", timeout.as_secs_f64())]
    Timeout { url: String, timeout: Duration },
    #[error("the LDAP directory {url}: {message}")]
    Failed { url: String, message: String },
}

/// What the directory says about a user whose password it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub dn: String,
    pub groups: Vec<String>,
}

/// A checked `[auth.ldap]`, ready to log users in.
pub struct Directory {
    config: LdapConfig,
    settings: LdapConnSettings,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Directory {
    /// Check the settings (URL, filters, CA file) once, at start.
    pub fn new(config: LdapConfig) -> Result<Directory, LdapConfigError> {
        let url = config.url.as_str();
        let tls = if url.starts_with("ldaps://") {
            if config.starttls {
                return Err(config_err("starttls", "ldaps:// is TLS already: StartTLS is for ldap:// URLs"));
            }
            true
        } else if url.starts_with("ldap://") {
            config.starttls
        } else {
            return Err(config_err("url", format!("{url:?} must start with ldap:// or ldaps://")));
        };
        let host = url.split_once("://").map_or("", |(_, rest)| rest);
        if host.is_empty() || host.starts_with('/') || url.contains(char::is_whitespace) {
            return Err(config_err("url", format!("{url:?} names no host")));
        }
        if config.user_base.trim().is_empty() {
            return Err(config_err("user_base", "empty: the DN under which users are searched"));
        }
        check_filter("user_filter", &config.user_filter, &["{username}"])?;
        if config.group_base.as_deref().is_some_and(|b| b.trim().is_empty()) {
            return Err(config_err("group_base", "empty: remove it, or name the DN under which groups are"));
        }
        if config.group_base.is_some() {
            check_filter("group_filter", &config.group_filter, &["{dn}", "{username}"])?;
        }
        if config.group_attribute.is_empty() || config.group_attribute.contains(char::is_whitespace) {
            return Err(config_err(
                "group_attribute",
                format!("{:?} is not an attribute name", config.group_attribute),
            ));
        }
        if config.bind_dn.is_empty() != config.bind_password.is_empty() {
            return Err(config_err(
                "bind_password",
                "bind_dn and bind_password go together (neither: search anonymously)",
            ));
        }
        if config.timeout.is_zero() {
            return Err(config_err("timeout", "must be more than zero"));
        }
        let mut settings =
            LdapConnSettings::new().set_conn_timeout(config.timeout).set_starttls(config.starttls);
        if let Some(path) = &config.ca_file {
            if !tls {
                return Err(config_err("ca_file", "is for ldaps:// or StartTLS (`starttls = true`)"));
            }
            settings = settings.set_config(Arc::new(tls_config(path)?));
        }
        Ok(Directory { config, settings })
    }

    pub fn config(&self) -> &LdapConfig {
        &self.config
    }

    /// Connect and bind as the search account, within the timeout: what the server checks
    /// at start to report a directory it cannot use (logins are still tried later).
    pub async fn check(&self) -> Result<(), DirectoryError> {
        let attempt = async {
            let (conn, mut ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.config.url)
                .await
                .map_err(|e| self.failed("cannot connect", e))?;
            ldap3::drive!(conn);
            let result = self.bind_search_account(&mut ldap).await;
            let _ = ldap.unbind().await;
            result
        };
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(DirectoryError::Timeout { url: self.config.url.clone(), timeout }))
    }

    /// Check `user`'s password with the directory. `Ok(None)`: no such user, several entries
    /// for the name, or a wrong (or empty) password.
    pub async fn login(&self, user: &str, password: &str) -> Result<Option<DirectoryUser>, DirectoryError> {
        if user.is_empty() || password.is_empty() || user.len() > 256 {
            return Ok(None);
        }
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.connect_and_login(user, password)).await {
            Ok(result) => result,
            Err(_) => Err(DirectoryError::Timeout { url: self.config.url.clone(), timeout }),
        }
    }

    fn failed(&self, what: &str, e: impl fmt::Display) -> DirectoryError {
        DirectoryError::Failed { url: self.config.url.clone(), message: format!("{what}: {e}") }
    }

    async fn connect_and_login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, DirectoryError> {
        let (conn, mut ldap) = LdapConnAsync::with_settings(self.settings.clone(), &self.config.url)
            .await
            .map_err(|e| self.failed("cannot connect", e))?;
        // The connection task ends when `ldap` (the only handle) is dropped.
        ldap3::drive!(conn);
        let result = self.login_on(&mut ldap, user, password).await;
        let _ = ldap.unbind().await;
        result
    }

    async fn bind_search_account(&self, ldap: &mut Ldap) -> Result<(), DirectoryError> {
        let c = &self.config;
        let res = ldap.simple_bind(&c.bind_dn, &c.bind_password).await.map_err(|e| self.failed("bind", e))?;
        if res.rc != 0 {
            let who = if c.bind_dn.is_empty() {
                "an anonymous bind".to_owned()
            } else {
                format!("bind_dn {:?}", c.bind_dn)
            };
            return Err(self.failed(
                &format!("the directory refused {who} (check auth.ldap.bind_dn and bind_password)"),
                ldap3::LdapError::from(res),
            ));
        }
        Ok(())
    }

    async fn login_on(
        &self,
        ldap: &mut Ldap,
        user: &str,
        password: &str,
    ) -> Result<Option<DirectoryUser>, DirectoryError> {
        let c = &self.config;
        self.bind_search_account(ldap).await?;
        let filter = fill_filter(&c.user_filter, user, "");
        // Two are enough to tell "exactly one" from "ambiguous".
        let ldap3::SearchResult(entries, res) = ldap
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&c.user_base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(|e| self.failed("user search", e))?;
        let entries = only_entries(entries);
        const SIZE_LIMIT_EXCEEDED: u32 = 4;
        if res.rc == SIZE_LIMIT_EXCEEDED || entries.len() > 1 {
            tracing::warn!(user, filter = %filter, "several directory entries match this user name: login refused");
            return Ok(None);
        }
        if res.rc != 0 {
            return Err(self.failed(&format!("user search under {:?}", c.user_base), LdapError::from(res)));
        }
        let Some(entry) = entries.into_iter().next() else { return Ok(None) };
        let dn = SearchEntry::construct(entry).dn;
        let res = ldap.simple_bind(&dn, password).await.map_err(|e| self.failed("user bind", e))?;
        if REFUSED_BIND.contains(&res.rc) {
            return Ok(None);
        }
        if res.rc != 0 {
            return Err(self.failed("user bind", LdapError::from(res)));
        }
        let groups = match &c.group_base {
            None => Vec::new(),
            Some(base) => {
                // Group entries are read as the search account, not as the user.
                self.bind_search_account(ldap).await?;
                let filter = fill_filter(&c.group_filter, user, &dn);
                let (entries, _) = ldap
                    .search(base, Scope::Subtree, &filter, vec![c.group_attribute.as_str()])
                    .await
                    .and_then(|r| r.success())
                    .map_err(|e| self.failed(&format!("group search under {base:?}"), e))?;
                let mut groups: Vec<String> = only_entries(entries)
                    .into_iter()
                    .filter_map(|e| {
                        let e = SearchEntry::construct(e);
                        let (_, values) =
                            e.attrs.into_iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.group_attribute))?;
                        values.into_iter().next()
                    })
                    .collect();
                groups.sort();
                groups.dedup();
                groups
            }
        };
        Ok(Some(DirectoryUser { dn, groups }))
    }
}

/// Search results without referrals and intermediate messages (Active Directory sends
/// referrals to its other partitions), which are not entries.
fn only_entries(results: Vec<ldap3::ResultEntry>) -> Vec<ldap3::ResultEntry> {
    results.into_iter().filter(|e| !e.is_ref() && !e.is_intermediate()).collect()
}

/// `template` with `{username}` and `{dn}` replaced by their RFC 4515 escapes, in one pass
/// (a user name holding `{dn}` stays literal text).
pub fn fill_filter(template: &str, username: &str, dn: &str) -> String {
    let mut out = String::with_capacity(template.len() + username.len() + dn.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{username}") {
            out.push_str(&escape_value(username));
            rest = after;
        } else if let Some(after) = tail.strip_prefix("{dn}") {
            out.push_str(&escape_value(dn));
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// RFC 4515 section 3: `*`, `(`, `)`, `\` and NUL as `\XX` inside an assertion value.
pub fn escape_value(value: &str) -> String {
    ldap3::ldap_escape(value).into_owned()
}

/// A filter must parse once its placeholders are filled, and use at least one of `needs`.
fn check_filter(field: &'static str, filter: &str, needs: &[&str]) -> Result<(), LdapConfigError> {
    if !needs.iter().any(|n| filter.contains(n)) {
        return Err(config_err(field, format!("{filter:?} must contain {}", needs.join(" or "))));
    }
    let sample = fill_filter(filter, "someone", "uid=someone,dc=example,dc=org");
    if ldap3::parse_filter(&sample).is_err() {
        return Err(config_err(
            field,
            format!("{filter:?} is not an LDAP filter (RFC 4515), such as \"(uid={{username}})\""),
        ));
    }
    Ok(())
}

/// rustls (ring) trusting only the certificates of `path`.
fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, LdapConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| config_err("ca_file", format!("cannot read {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| config_err("ca_file", format!("{}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| config_err("ca_file", format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(config_err("ca_file", format!("{} holds no PEM certificate", path.display())));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err("ca_file", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_escaped_in_one_pass() {
        assert_eq!(fill_filter("(uid={username})", "alice", ""), "(uid=alice)");
        // The classic injection stays one literal value.
        assert_eq!(fill_filter("(uid={username})", "*)(uid=*", ""), "(uid=\\2a\\29\\28uid=\\2a)");
        assert_eq!(fill_filter("(uid={username})", "a\\b\0", ""), "(uid=a\\5cb\\00)");
        assert_eq!(
            fill_filter("(&(member={dn})(x={username}))", "{dn}", "cn=Smith\\, J,dc=x"),
            "(&(member=cn=Smith\\5c, J,dc=x)(x={dn}))"
        );
        assert_eq!(fill_filter("({other}={username})", "a", ""), "({other}=a)");
        // Still a single equality filter after escaping.
        assert!(ldap3::parse_filter(fill_filter("(uid={username})", "*)(|(uid=*", "")).is_ok());
    }

    fn config() -> LdapConfig {
        let mut c = LdapConfig::new("ldap://127.0.0.1:389", "ou=people,dc=example,dc=org");
        c.group_base = Some("ou=groups,dc=example,dc=org".into());
        c
    }

    #[test]
    fn checks_the_settings() {
        assert!(Directory::new(config()).is_ok());
        let err = |f: &dyn Fn(&mut LdapConfig)| {
            let mut c = config();
            f(&mut c);
            Directory::new(c).unwrap_err().to_string()
        };
        assert!(err(&|c| c.url = "http://x".into()).contains("auth.ldap.url"));
        assert!(err(&|c| c.url = "ldap://".into()).contains("no host"));
        assert!(err(&|c| c.url = "ldaps:///".into()).contains("no host"));
        let mut c = config();
        c.url = "ldap://x".into();
        assert!(Directory::new(c).is_ok());
        assert!(
            err(&|c| {
                c.url = "ldaps://x".into();
                c.starttls = true
            })
            .contains("starttls")
        );
        assert!(err(&|c| c.user_filter = "(uid=alice)".into()).contains("{username}"));
        assert!(err(&|c| c.user_filter = "uid={username})(".into()).contains("not an LDAP filter"));
        assert!(err(&|c| c.group_filter = "(member=x)".into()).contains("group_filter"));
        assert!(err(&|c| c.bind_dn = "cn=wharf".into()).contains("bind_password"));
        assert!(err(&|c| c.timeout = Duration::ZERO).contains("timeout"));
        assert!(err(&|c| c.ca_file = Some("/nonexistent.pem".into())).contains("StartTLS"));
        assert!(
            err(&|c| {
                c.url = "ldaps://x".into();
                c.ca_file = Some("/nonexistent.pem".into())
            })
            .contains("/nonexistent.pem")
        );
        // Without group_base the group filter is not used.
        let mut c = config();
        c.group_base = None;
        c.group_filter = String::new();
        assert!(Directory::new(c).is_ok());
        let mut c = config();
        c.bind_password = "secret-pw".into();
        c.bind_dn = "cn=wharf".into();
        assert!(!format!("{c:?}").contains("secret-pw"));
    }

    #[tokio::test]
    async fn empty_passwords_never_reach_the_directory() {
        // Nothing listens on port 9: a connection attempt would be an error, not `None`.
        let mut c = config();
        c.url = "ldap://127.0.0.1:9".into();
        let d = Directory::new(c).unwrap();
        assert_eq!(d.login("alice", "").await.unwrap(), None);
        assert_eq!(d.login("", "pw").await.unwrap(), None);
        assert!(d.login("alice", "pw").await.is_err());
    }
}
