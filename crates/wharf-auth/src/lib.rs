//! Wharf's authentication and authorization, without HTTP types.
//!
//! - [`Htpasswd`]: users and their bcrypt hashes (`htpasswd -B`), verified in constant time
//!   with the cost the file says;
//! - [`Rules`]: ordered repository-pattern rules (`*` one segment, `**` any), each listing who
//!   may `pull`, `push` and `delete`; the first matching pattern decides, no match = no access;
//! - [`Scope`]: Docker token scopes (`repository:NAME:pull,push`, `registry:catalog:*`);
//! - the built-in token issuer: HS256 JWTs carrying the granted scopes ([`token`]);
//! - [`Directory`]: users and groups from an LDAP directory (`[auth.ldap]`), beside or
//!   instead of the htpasswd file;
//! - [`Authority`]: all of it together, as the server uses it;
//! - password logins throttled per client and per user, and bcrypt checks capped
//!   ([`throttle`], [`Authority::password_login`]).

mod htpasswd;
mod ldap;
mod login;
mod rules;
mod scope;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wharf_oci::RepoName;

pub use htpasswd::{Htpasswd, HtpasswdError, MAX_COST};
pub use ldap::{Directory, DirectoryError, DirectoryUser, LdapConfig, LdapConfigError};
pub use login::{LoginError, LoginStats};
pub use rules::{Action, Actions, Identity, Principal, Rule, Rules};
pub use scope::{Scope, ScopeError};
pub use throttle::{LoginLimits, Throttled};
pub use token::{Claims, ExternalIssuer, KeyError, KeyFamily, PublicKey, TokenError, TokenKey};

/// The user name of [`Authority::internal_credentials`].
pub const INTERNAL_USER: &str = "_wharf-internal";

/// The `service` of challenges and tokens unless configured.
pub const DEFAULT_SERVICE: &str = "wharf";
/// The `iss` of every token this server issues.
pub const ISSUER: &str = "wharf";
/// How long an issued token is valid.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Successful password checks are remembered this long (bcrypt is slow on purpose; a pull is
/// dozens of requests).
const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
const LOGIN_CACHE_MAX: usize = 1024;

pub(crate) fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// The Docker token flow's settings.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `service` in challenges and the `aud` of tokens.
    pub service: String,
    /// The advertised token endpoint; `None`: `<scheme>://<Host of the request>/token`.
    pub realm: Option<String>,
    pub key: TokenKey,
    /// Was the key configured (shared across restarts and replicas) or random at start?
    pub key_configured: bool,
    pub ttl: Duration,
    /// An external token service whose tokens are accepted too (`token_issuer`, `token_keys`).
    pub external: Option<ExternalIssuer>,
    /// Does `/token` issue tokens here? (Off when only an external service issues them.)
    pub builtin_issuer: bool,
}

impl TokenSettings {
    /// Settings with the default service and lifetime, and a random key.
    pub fn new() -> TokenSettings {
        TokenSettings {
            service: DEFAULT_SERVICE.into(),
            realm: None,
            key: TokenKey::random(),
            key_configured: false,
            ttl: DEFAULT_TOKEN_TTL,
            external: None,
            builtin_issuer: true,
        }
    }
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings::new()
    }
}

/// Everything `[auth]` configures.
#[derive(Debug, Default)]
pub struct AuthConfig {
    /// Users; `None`: nobody can log in, only rules that admit `*` apply.
    pub htpasswd: Option<Htpasswd>,
    pub rules: Vec<Rule>,
    /// `Some`: the Docker token flow (Bearer challenges, the `/token` endpoint); `None`:
    /// basic auth on every request.
    pub token: Option<TokenSettings>,
}

/// A token as the token endpoint returns it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339, UTC.
    pub issued_at: String,
    pub claims: Claims,
}

/// Users, rules and the token issuer: what the server asks who may do what.
#[derive(Debug)]
pub struct Authority {
    htpasswd: Option<Htpasswd>,
    rules: Rules,
    token: Option<TokenSettings>,
    cache: LoginCache,
    /// The password of [`INTERNAL_USER`], once [`Authority::internal_credentials`] made it.
    internal: Option<String>,
    /// `[auth.ldap]`: users who are not in the htpasswd file.
    directory: Option<Directory>,
    /// Failed logins per client and user, the cap on concurrent bcrypt checks, counters.
    throttle: throttle::LoginThrottle,
    checks: tokio::sync::Semaphore,
    stats: LoginStats,
}

impl Authority {
    pub fn new(config: AuthConfig) -> Authority {
        Authority {
            htpasswd: config.htpasswd,
            rules: Rules::new(config.rules),
            token: config.token,
            cache: LoginCache::new(),
            internal: None,
            directory: None,
            throttle: throttle::LoginThrottle::new(LoginLimits::default()),
            checks: tokio::sync::Semaphore::new(LoginLimits::default().concurrent_checks),
            stats: LoginStats::default(),
        }
    }

    /// Also log in the users of an LDAP directory (those not in the htpasswd file).
    pub fn with_directory(mut self, directory: Directory) -> Authority {
        self.directory = Some(directory);
        self
    }

    pub fn directory(&self) -> Option<&Directory> {
        self.directory.as_ref()
    }

    /// User name and a random password (256 bits, made now, kept in memory only) with which
    /// this process logs in to itself as [`Identity::Internal`]: pull and push everywhere,
    /// never delete. The server's own mirror runs push over loopback HTTP through the same
    /// client, auth and token flow as any other client, whatever the rules say.
    pub fn internal_credentials(&mut self) -> (String, String) {
        let password = self.internal.get_or_insert_with(|| htpasswd::random_hex(32)).clone();
        (INTERNAL_USER.to_owned(), password)
    }

    /// Is this the internal login? Compared in constant time.
    fn is_internal(&self, user: &str, password: &str) -> bool {
        let Some(secret) = &self.internal else { return false };
        if user != INTERNAL_USER || secret.len() != password.len() {
            return false;
        }
        secret.bytes().zip(password.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Configuration that is valid but probably not what was meant (to log at start).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.rules.as_slice().is_empty() {
            out.push("[auth] has no rules: every repository is inaccessible to everyone".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.rules.named_users() {
            // Directory users are only known at login.
            let known = self.directory.is_some() || self.htpasswd.as_ref().is_some_and(|h| h.contains(user));
            if !known && seen.insert(user) {
                let pattern = self.rules.as_slice()[i].pattern.as_str();
                out.push(format!(
                    "auth rule {} (pattern {pattern:?}) names user {user:?}, who is not in the htpasswd file",
                    i + 1
                ));
            }
        }
        if self.htpasswd.is_none() && self.directory.is_none() && self.rules.mentions_users() {
            out.push("[auth] rules admit users but no htpasswd file is configured: nobody can log in".into());
        }
        let groups = self.directory.as_ref().is_some_and(|d| d.config().group_base.is_some());
        if let Some((i, group)) = self.rules.named_groups().next().filter(|_| !groups) {
            let pattern = self.rules.as_slice()[i].pattern.as_str();
            out.push(format!(
                "auth rule {} (pattern {pattern:?}) names group {group:?}, but no [auth.ldap] group_base is \
                 configured: nobody is in any group",
                i + 1
            ));
        }
        if let Some(costs) = self.htpasswd.as_ref().map(Htpasswd::costs).filter(|c| c.len() > 1) {
            let max = costs.last().map_or(0, |c| c.0);
            let listed: Vec<String> = costs.iter().map(|(c, n)| format!("{n} at cost {c}")).collect();
            out.push(format!(
                "the htpasswd file mixes bcrypt costs ({}): every login is checked at cost {max}'s price \
                 so that its time tells nothing; rehash the others at one cost",
                listed.join(", ")
            ));
        }
        if self.token.as_ref().is_some_and(|t| t.realm.is_none()) {
            out.push(
                "auth.realm is not set: the token endpoint advertised to clients is built from each \
                 request's Host and X-Forwarded-Proto headers, which a client or a proxy chooses; set \
                 realm to the public https:// URL of /token in production (see docs/OPERATIONS.md)"
                    .into(),
            );
        }
        out
    }

    pub fn token_settings(&self) -> Option<&TokenSettings> {
        self.token.as_ref()
    }

    pub fn user_count(&self) -> usize {
        self.htpasswd.as_ref().map_or(0, Htpasswd::len)
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// A password check answered from the cache of recent successes, without bcrypt.
    pub fn cached_login(&self, user: &str, password: &str) -> Option<Identity> {
        if self.is_internal(user, password) {
            return Some(Identity::Internal);
        }
        self.cache.get(user, password)
    }

    /// Check a user's password (one bcrypt computation: call it off the async executor).
    /// `None`: unknown user or wrong password.
    pub fn login(&self, user: &str, password: &str) -> Option<Identity> {
        if let Some(id) = self.cached_login(user, password) {
            return Some(id);
        }
        let htpasswd = self.htpasswd.as_ref()?;
        if htpasswd.verify(user, password) {
            let id = Identity::User(user.to_owned());
            self.cache.put(user, password, &id);
            Some(id)
        } else {
            None
        }
    }

    /// The directory that checks `user`'s password: none for users of the htpasswd file
    /// (checked there first) and for the internal user.
    pub(crate) fn directory_for(&self, user: &str) -> Option<&Directory> {
        let in_file = self.htpasswd.as_ref().is_some_and(|h| h.contains(user));
        self.directory.as_ref().filter(|_| !in_file && user != INTERNAL_USER)
    }

    /// What `id` may do on `repo`, by the rules.
    pub fn actions_for(&self, id: &Identity, repo: &RepoName) -> Actions {
        if *id == Identity::Internal {
            return [Action::Pull, Action::Push].into_iter().collect();
        }
        self.rules.actions_for(id, repo)
    }

    /// The groups of `id` that some rule names (as the rules spell them, each once): what a
    /// token must carry for the rules to judge its holder as they judge a basic-auth login.
    /// The rest of a directory user's groups would only make the token longer.
    fn groups_named_by_rules(&self, id: &Identity) -> Vec<String> {
        let mut groups: Vec<String> = Vec::new();
        for (_, group) in self.rules.named_groups() {
            if id.in_group(group) && !groups.iter().any(|g| g.eq_ignore_ascii_case(group)) {
                groups.push(group.to_owned());
            }
        }
        groups
    }

    /// The catalog is for users who logged in (and lists what they may pull).
    pub fn may_list_catalog(&self, id: &Identity) -> bool {
        !id.is_anonymous()
    }

    /// The requested scopes intersected with what the rules allow `id`. Unknown resource
    /// types, invalid names and refused actions are dropped (an empty grant is valid);
    /// `*` on a repository stands for every action allowed.
    pub fn grant(&self, id: &Identity, requested: &[Scope]) -> Vec<Scope> {
        let mut granted: Vec<Scope> = Vec::new();
        for s in requested {
            let scope = match s.kind.as_str() {
                "repository" => {
                    let Ok(repo) = s.name.parse::<RepoName>() else { continue };
                    let allowed = self.actions_for(id, &repo);
                    let mut asked = Actions::NONE;
                    for a in &s.actions {
                        match a.as_str() {
                            "*" => asked = Actions::ALL,
                            other => {
                                if let Some(action) = Action::parse(other) {
                                    asked.insert(action);
                                }
                            }
                        }
                    }
                    let actions: Actions = asked.iter().filter(|a| allowed.contains(*a)).collect();
                    // Merge with an earlier scope on the same repository.
                    if let Some(prev) =
                        granted.iter_mut().find(|g| g.kind == "repository" && g.name == s.name)
                    {
                        let mut all: Actions = prev.actions.iter().filter_map(|a| Action::parse(a)).collect();
                        actions.iter().for_each(|a| all.insert(a));
                        *prev = Scope::repository(&s.name, all.iter());
                        continue;
                    }
                    if actions.is_empty() {
                        continue;
                    }
                    Scope::repository(&s.name, actions.iter())
                }
                "registry" if s.name == "catalog" && s.actions.iter().any(|a| a == "*") => {
                    if !self.may_list_catalog(id) || granted.contains(&Scope::catalog()) {
                        continue;
                    }
                    Scope::catalog()
                }
                _ => continue,
            };
            granted.push(scope);
        }
        granted
    }

    /// Mint a token for `id` with the intersection of `requested` and its permissions.
    /// `None` when the token flow is not configured.
    pub fn issue(&self, id: &Identity, requested: &[Scope]) -> Option<IssuedToken> {
        self.issue_at(id, requested, now_secs())
    }

    /// [`issue`](Self::issue) at a given time (seconds since the epoch).
    pub fn issue_at(&self, id: &Identity, requested: &[Scope], now: u64) -> Option<IssuedToken> {
        let settings = self.token.as_ref().filter(|t| t.builtin_issuer)?;
        let ttl = settings.ttl.as_secs().max(1);
        let claims = Claims {
            iss: ISSUER.into(),
            sub: id.user().unwrap_or("").to_owned(),
            aud: settings.service.clone(),
            exp: now + ttl,
            nbf: now,
            iat: now,
            jti: htpasswd::random_hex(16),
            access: self.grant(id, requested),
            groups: self.groups_named_by_rules(id),
        };
        Some(IssuedToken {
            token: token::sign(&settings.key, &claims),
            expires_in: ttl,
            issued_at: rfc3339(now),
            claims,
        })
    }

    /// Verify a bearer token: `HS256` of the built-in issuer, or an asymmetric one of the
    /// external token service when one is configured (the header's `alg` says which).
    pub fn verify_token(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_token_at(token, now_secs())
    }

    pub fn verify_token_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let settings = self.token.as_ref().ok_or(TokenError::WrongAudience)?;
        match &settings.external {
            Some(ext) if !token::is_hs256(token) => ext.verify(token, &settings.service, now),
            _ => token::verify(&settings.key, token, ISSUER, &settings.service, now),
        }
    }
}

/// `user:password` from the base64 of an `Authorization: Basic` header.
pub fn parse_basic(b64: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch.
pub use wharf_registry::events::rfc3339;

/// Recent successful logins, keyed by an HMAC (with a per-process random key) of user and
/// password: neither is stored. A changed password stops working when its entry expires.
struct LoginCache {
    key: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
}

impl std::fmt::Debug for LoginCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginCache")
    }
}

impl LoginCache {
    fn new() -> LoginCache {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        LoginCache { key, entries: Mutex::new(HashMap::new()) }
    }

    fn fingerprint(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn get(&self, user: &str, password: &str) -> Option<Identity> {
        let fp = self.fingerprint(user, password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(&fp) {
            Some((id, at)) if at.elapsed() < LOGIN_CACHE_TTL && id.user() == Some(user) => Some(id.clone()),
            _ => None,
        }
    }

    fn put(&self, user: &str, password: &str, id: &Identity) {
        let fp = self.fingerprint(user, password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= LOGIN_CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < LOGIN_CACHE_TTL);
            if entries.len() >= LOGIN_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(fp, (id.clone(), Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn htpasswd(users: &[(&str, &str)]) -> Htpasswd {
        let text: String = users
            .iter()
            .map(|(u, p)| {
                let h = bcrypt::hash_with_salt(p, 4, [3u8; 16]).unwrap();
                format!("{u}:{}\n", h.format_for_version(bcrypt::Version::TwoY))
            })
            .collect();
        Htpasswd::parse(&text).unwrap()
    }

    fn authority(token: bool) -> Authority {
        Authority::new(AuthConfig {
            htpasswd: Some(htpasswd(&[("ci", "pw"), ("admin", "root")])),
            rules: vec![
                Rule::new("mirror/**", &strings(&["*"]), &strings(&["ci"]), &strings(&["admin"])).unwrap(),
                Rule::new("private/**", &strings(&["authenticated"]), &strings(&["ci"]), &[]).unwrap(),
            ],
            token: token.then(TokenSettings::new),
        })
    }

    fn scopes(s: &str) -> Vec<Scope> {
        Scope::parse_list(s).unwrap()
    }

    #[test]
    fn logins() {
        let a = authority(false);
        assert_eq!(a.cached_login("ci", "pw"), None);
        assert_eq!(a.login("ci", "pw"), Some(Identity::User("ci".into())));
        assert_eq!(a.cached_login("ci", "pw"), Some(Identity::User("ci".into())));
        assert_eq!(a.cached_login("ci", "other"), None);
        assert_eq!(a.login("ci", "wrong"), None);
        assert_eq!(a.login("nobody", "pw"), None);
        assert_eq!(a.login("", ""), None);
        let no_users = Authority::new(AuthConfig::default());
        assert_eq!(no_users.login("ci", "pw"), None);
        assert!(!no_users.warnings().is_empty());
        assert!(a.warnings().is_empty(), "{:?}", a.warnings());
    }

    #[tokio::test]
    async fn htpasswd_users_are_checked_first_and_others_by_the_directory() {
        // Nothing listens on port 9: a login that reaches the directory is an error.
        let config = LdapConfig::new("ldap://127.0.0.1:9", "ou=people,dc=example,dc=org");
        let a = std::sync::Arc::new(authority(false).with_directory(Directory::new(config).unwrap()));
        let client = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let login = |u: &str, p: &str| a.password_login(client, u.into(), p.into());
        assert_eq!(login("ci", "pw").await, Ok(Identity::User("ci".into())));
        // A user of the file with a wrong password is refused by the file alone.
        assert_eq!(login("ci", "wrong").await, Err(LoginError::Invalid));
        assert!(matches!(login("alice", "pw").await, Err(LoginError::Directory(_))));
        // Cached directory logins keep their groups, and only for the password that worked.
        let alice = Identity::Member { user: "alice".into(), groups: vec!["platform".into()] };
        a.cache.put("alice", "pw", &alice);
        assert_eq!(login("alice", "pw").await, Ok(alice));
        assert!(matches!(login("alice", "other").await, Err(LoginError::Directory(_))));
        assert_eq!(a.cached_login("bob", "pw"), None);
    }

    #[test]
    fn grants_the_intersection() {
        let a = authority(true);
        let ci = Identity::User("ci".into());
        let g = a.grant(&ci, &scopes("repository:mirror/app:pull,push,delete repository:other:pull"));
        assert_eq!(g, vec![Scope::repository("mirror/app", [Action::Pull, Action::Push])]);
        // Anonymous: pull of the public pattern only; no catalog.
        let g = a.grant(
            &Identity::Anonymous,
            &scopes("repository:mirror/app:pull,push repository:private/x:pull registry:catalog:*"),
        );
        assert_eq!(g, vec![Scope::repository("mirror/app", [Action::Pull])]);
        // `*` is every allowed action; two scopes on one repository merge.
        let admin = Identity::User("admin".into());
        let g = a.grant(&admin, &scopes("repository:mirror/a:* registry:catalog:*"));
        assert_eq!(g, vec![Scope::repository("mirror/a", [Action::Pull, Action::Delete]), Scope::catalog()]);
        let g = a.grant(&ci, &scopes("repository:private/x:pull repository:private/x:push"));
        assert_eq!(g, vec![Scope::repository("private/x", [Action::Pull, Action::Push])]);
        // Invalid names and unknown types grant nothing.
        assert!(
            a.grant(&ci, &scopes("repository:UPPER:pull plugin:x:pull repository(plugin):mirror/a:pull"))
                .is_empty()
        );
        assert!(a.grant(&ci, &[]).is_empty());
    }

    #[test]
    fn issues_and_verifies_tokens() {
        let a = authority(true);
        let now = 1_700_000_000;
        let t = a
            .issue_at(&Identity::User("ci".into()), &scopes("repository:mirror/app:pull,push"), now)
            .unwrap();
        assert_eq!(t.expires_in, 300);
        assert_eq!(t.issued_at, "2023-11-14T22:13:20Z");
        let c = a.verify_token_at(&t.token, now + 1).unwrap();
        assert_eq!(c.identity(), Identity::User("ci".into()));
        assert!(c.permits("repository", "mirror/app", "push"));
        assert_eq!(a.verify_token_at(&t.token, now + 301), Err(TokenError::Expired));
        // An empty grant is still a token, for anonymous too.
        let t = a.issue_at(&Identity::Anonymous, &scopes("repository:private/x:pull"), now).unwrap();
        let c = a.verify_token_at(&t.token, now).unwrap();
        assert!(c.access.is_empty());
        assert_eq!(c.identity(), Identity::Anonymous);
        // Another Authority (another random key) refuses it; basic-only mode issues nothing.
        assert_eq!(authority(true).verify_token_at(&t.token, now), Err(TokenError::BadSignature));
        assert!(authority(false).issue(&Identity::Anonymous, &[]).is_none());
        assert!(authority(false).verify_token(&t.token).is_err());
    }

    #[test]
    fn tokens_carry_the_groups_the_rules_name() {
        let rules = vec![Rule::new("team/**", &strings(&["group:Dev"]), &[], &[]).unwrap()];
        let a = Authority::new(AuthConfig { rules, token: Some(TokenSettings::new()), ..Default::default() });
        let now = 1_700_000_000;
        let bob = Identity::Member { user: "bob".into(), groups: strings(&["staff", "dev", "DEV"]) };
        let t = a.issue_at(&bob, &scopes("registry:catalog:*"), now).unwrap();
        // Only the group a rule names, once, spelled as the rule spells it.
        assert_eq!(t.claims.groups, ["Dev"]);
        let back = a.verify_token_at(&t.token, now).unwrap().identity();
        assert_eq!(back, Identity::Member { user: "bob".into(), groups: strings(&["Dev"]) });
        let repo: RepoName = "team/app".parse().unwrap();
        assert!(a.actions_for(&back, &repo).contains(Action::Pull));
        // A user in no named group gets a token without the claim, as before.
        let carol = Identity::Member { user: "carol".into(), groups: strings(&["staff"]) };
        let t = a.issue_at(&carol, &[], now).unwrap();
        assert!(t.claims.groups.is_empty());
        assert_eq!(a.verify_token_at(&t.token, now).unwrap().identity(), Identity::User("carol".into()));
    }

    #[test]
    fn internal_login_pulls_and_pushes_everywhere_but_never_deletes() {
        let mut a = authority(true);
        assert_eq!(a.login(INTERNAL_USER, ""), None, "no internal login until it is made");
        let (user, password) = a.internal_credentials();
        assert_eq!(a.internal_credentials().1, password, "made once");
        assert_eq!(password.len(), 64);
        assert_eq!(a.cached_login(&user, &password), Some(Identity::Internal));
        assert_eq!(a.login(&user, "wrong"), None);
        let actions = a.actions_for(&Identity::Internal, &"private/x".parse().unwrap());
        assert!(actions.contains(Action::Pull) && actions.contains(Action::Push));
        assert!(!actions.contains(Action::Delete));
        let g = a.grant(&Identity::Internal, &scopes("repository:private/x:pull,push,delete"));
        assert_eq!(g, vec![Scope::repository("private/x", [Action::Pull, Action::Push])]);
    }

    #[test]
    fn basic_header_and_dates() {
        assert_eq!(parse_basic("Y2k6cHc="), Some(("ci".into(), "pw".into())));
        // Passwords may contain colons.
        let b64 = base64::engine::general_purpose::STANDARD.encode("u:a:b");
        assert_eq!(parse_basic(&b64), Some(("u".into(), "a:b".into())));
        assert_eq!(parse_basic("Og=="), Some((String::new(), String::new())));
        assert_eq!(parse_basic("not base64!"), None);
        assert_eq!(parse_basic("bm9jb2xvbg=="), None);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
