//! `wharf serve`: open the stores, build the registry, serve until a signal.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use wharf_registry::{DEFAULT_GRACE, GarbageCollector, Registry};

use crate::config::{authority, mirror_specs, registry_config, tls_config};
use crate::stores::{Open, StoreArgs, Stores};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long)]
    addr: Option<String>,
    /// Directory for blobs, uploads and the embedded SQLite database [default: ./wharf-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Default index policy for repositories no pattern matches.
    #[arg(long, value_parser = ["complete", "sparse"])]
    index_policy: Option<String>,
    /// Metadata database: sqlite://PATH or postgres://... [default: SQLite in the data dir].
    #[arg(long)]
    database: Option<String>,
    /// Serve HTTPS with this certificate (PEM: the server's, then intermediates); needs --tls-key.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, unencrypted).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // The same stores as `gc` and `fsck`; serve's flags keep their own help text.
    let stores = StoreArgs { config: args.config, data_dir: args.data_dir, database: args.database };
    let file = stores.load_config()?;
    let addr = args.addr.or(file.addr.clone()).unwrap_or_else(|| "127.0.0.1:5000".into());
    let config = registry_config(&file, args.index_policy.as_deref())?;
    let mut auth = authority(&file)?;
    let tls = tls_config(&file, args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let mirrors = mirror_specs(&file)?;
    let limits = file.limits.as_ref().map(LimitsFile::limits).transpose()?.unwrap_or_default();
    let board = crate::mirror_runs::board(&mirrors)?;
    // Mirror runs push into this registry through its own API, logged in as itself.
    let internal_login = match (&mut auth, mirrors.is_empty()) {
        (Some(a), false) => Some(a.internal_credentials()),
        _ => None,
    };

    let Stores { blobs, meta, data_dir, database } = stores.open(&file, Open::CreateIfMissing).await?;

    let policy = &config.index_policy;
    if policy.any_sparse() {
        let mut where_ = Vec::new();
        if policy.default.allows_sparse() {
            where_.push(format!("by default ({})", policy.default.describe()));
        }
        for (pattern, rule) in &policy.repositories {
            if rule.allows_sparse() {
                where_.push(format!("{} ({})", pattern.as_str(), rule.describe()));
            }
        }
        tracing::warn!(
            "sparse indexes are accepted in: {}; absent platforms are reported by /v2/<name>/_wharf/index/<ref>",
            where_.join(", ")
        );
    }
    let blob_store = blobs.describe();
    let registry = Registry::new(blobs, meta, config);
    log_auth(auth.as_ref(), tls.is_some());
    if let Some(d) = auth.as_ref().and_then(|a| a.directory()) {
        match d.check().await {
            Ok(()) => {
                tracing::info!(url = %d.config().url, "LDAP directory reachable, search account accepted")
            }
            Err(e) => {
                tracing::warn!(error = %e, "LDAP directory not usable now: its users get 503 until it is")
            }
        }
    }

    let expiry = Duration::from_secs(3600 * file.upload_expiry_hours.unwrap_or(24));
    tokio::spawn(expire_uploads(registry.clone(), expiry));
    if let Some(minutes) = file.gc_interval_minutes.filter(|m| *m > 0) {
        tracing::info!(
            every_minutes = minutes,
            grace_seconds = DEFAULT_GRACE.as_secs(),
            "garbage collection enabled"
        );
        tokio::spawn(collect_garbage(registry.clone(), Duration::from_secs(minutes.saturating_mul(60))));
    }

    let listener = bind(&addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, scheme, data_dir = %data_dir.display(), blobs = %blob_store, metadata = %redact(&database), "wharf registry listening");
    if !mirrors.is_empty() {
        // Our own listening socket: the connection stays on this machine, and a certificate
        // made for the registry's public name would not match the loopback address.
        let target = wharf_sync::LocalTarget {
            host: crate::mirror_runs::loopback_host(local),
            credentials: internal_login,
            tls_verify: false,
        };
        crate::mirror_runs::start(mirrors, target, board.clone(), registry.clone());
    }
    wharf_server::serve_with_limits(listener, registry, auth, tls, board, limits, shutdown_signal()).await?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Connections beyond `[limits] max_connections` wait in the kernel's listen backlog: make it
/// hold many (the kernel caps it at `net.core.somaxconn`), not the usual 128.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await.with_context(|| format!("resolving {addr}"))? {
        let socket =
            if sa.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }?;
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("binding {addr}")),
        None => anyhow::bail!("binding {addr}: the address resolves to nothing"),
    }
}

/// `[limits]`: how many connections, and how long a client may take; every field optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Request line and headers must arrive within this ("30s"); also the keep-alive idle time.
    pub header_read_timeout: Option<String>,
    /// A request body that sends nothing for this long is ended ("60s").
    pub body_idle_timeout: Option<String>,
    /// A client that reads nothing of its response for this long is disconnected ("60s").
    pub write_idle_timeout: Option<String>,
    /// Connections served at once; more wait in the listen backlog (512).
    pub max_connections: Option<usize>,
    /// Request line plus headers, in bytes (65536); larger heads get 431.
    pub max_header_bytes: Option<usize>,
    /// A request body slower than this many bytes per second is ended (1024; 0: no minimum).
    pub min_body_rate: Option<u64>,
    /// The waiting time over which `min_body_rate` is judged ("60s").
    pub body_rate_window: Option<String>,
    /// Connections one client address may hold at once (no limit by default: behind a proxy
    /// every client has the proxy's address); beyond it, 429.
    pub max_connections_per_address: Option<usize>,
    /// Pushed blobs larger than this many bytes are refused with 413 (no limit by default).
    /// A registry setting (`RegistryConfig::max_blob_bytes`), kept here with the other limits.
    pub max_blob_bytes: Option<u64>,
}

impl LimitsFile {
    pub fn limits(&self) -> anyhow::Result<wharf_server::Limits> {
        let mut limits = wharf_server::Limits::default();
        let duration = |key: &str, value: &str| -> anyhow::Result<Duration> {
            let d = crate::gc_cmd::parse_duration(value).map_err(|e| anyhow::anyhow!("limits.{key}: {e}"))?;
            anyhow::ensure!(!d.is_zero(), "limits.{key} must be more than 0s");
            Ok(d)
        };
        if let Some(v) = &self.header_read_timeout {
            limits.header_read_timeout = duration("header_read_timeout", v)?;
        }
        if let Some(v) = &self.body_idle_timeout {
            limits.body_idle_timeout = duration("body_idle_timeout", v)?;
        }
        if let Some(v) = &self.write_idle_timeout {
            limits.write_idle_timeout = duration("write_idle_timeout", v)?;
        }
        if let Some(n) = self.max_connections {
            anyhow::ensure!(n > 0, "limits.max_connections must be at least 1");
            limits.max_connections = n;
        }
        if let Some(n) = self.max_header_bytes {
            anyhow::ensure!(n >= 1024, "limits.max_header_bytes must be at least 1024");
            limits.max_header_bytes = n;
        }
        if let Some(n) = self.min_body_rate {
            limits.min_body_rate = n;
        }
        if let Some(v) = &self.body_rate_window {
            limits.body_rate_window = duration("body_rate_window", v)?;
        }
        if let Some(n) = self.max_connections_per_address {
            anyhow::ensure!(n > 0, "limits.max_connections_per_address must be at least 1");
            limits.max_connections_per_address = n;
        }
        anyhow::ensure!(self.max_blob_bytes != Some(0), "limits.max_blob_bytes must be at least 1");
        Ok(limits)
    }
}

/// Say at start who may do what (never a secret).
fn log_auth(auth: Option<&wharf_server::wharf_auth::Authority>, tls: bool) {
    let Some(auth) = auth else {
        tracing::info!("no [auth] section: every client may pull, push and delete, anonymously");
        return;
    };
    for warning in auth.warnings() {
        tracing::warn!("{warning}");
    }
    let users = auth.user_count();
    let rules = auth.rules().as_slice().len();
    if let Some(d) = auth.directory().map(|d| d.config()) {
        let tls = d.url.starts_with("ldaps://") || d.starttls;
        let groups = d.group_base.as_deref().unwrap_or("(none: no group rules apply)");
        tracing::info!(url = %d.url, tls, user_base = %d.user_base, groups, timeout = ?d.timeout, "users also from the LDAP directory");
        if !tls {
            tracing::warn!(url = %d.url, "auth.ldap: passwords go to the directory unencrypted (use ldaps:// or starttls = true)");
        }
    }
    match auth.token_settings() {
        None => tracing::info!(users, rules, "authentication: basic auth (htpasswd)"),
        Some(t) => {
            let default_realm = if tls {
                "https://<Host of each request>/token"
            } else {
                "http://<Host of each request>/token"
            };
            let realm = t.realm.as_deref().unwrap_or(default_realm);
            tracing::info!(users, rules, realm, service = %t.service, "authentication: Docker token flow");
            if let Some(ext) = &t.external {
                tracing::info!(
                    issuer = %ext.issuer,
                    keys = ext.keys.len(),
                    builtin_issuer = t.builtin_issuer,
                    "accepting tokens of an external token service"
                );
            }
            if tls && realm.starts_with("http://") {
                tracing::warn!(
                    realm,
                    "auth.realm is plain HTTP while the registry serves HTTPS: passwords go to it unencrypted"
                );
            }
            if !t.key_configured && t.builtin_issuer {
                tracing::info!(
                    "auth.token_key is not set: tokens are signed with a key made at start, so they do not \
                     survive a restart and are not accepted by other replicas; set it to share them"
                );
            }
        }
    }
}

/// Hide a password in a database URL before it reaches a log line.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Takes the named job lock (held by at most one replica sharing the database); `None` when
/// another replica holds it, or the database cannot say.
async fn job_lock(registry: &Registry, job: &str) -> Option<wharf_metadata::NamedLock> {
    match registry.metadata().try_lock(&format!("job:{job}")).await {
        Ok(Some(lock)) => Some(lock),
        Ok(None) => {
            tracing::debug!(job, "another replica runs this job now; skipped here");
            None
        }
        Err(e) => {
            tracing::warn!(job, error = %e, "cannot take the job lock; skipped");
            None
        }
    }
}

async fn expire_uploads(registry: Registry, older_than: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let Some(lock) = job_lock(&registry, "upload-expiry").await else { continue };
        match registry.expire_uploads(older_than).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "expiring uploads failed"),
        }
        release(lock).await;
    }
}

async fn release(lock: wharf_metadata::NamedLock) {
    if let Err(e) = lock.release().await {
        tracing::warn!(error = %e, "could not release a job lock (its connection was closed instead)");
    }
}

/// Online garbage collection (see `wharf gc`) every `every`, first after one interval; one
/// summary line per run.
async fn collect_garbage(registry: Registry, every: Duration) {
    let gc = GarbageCollector::for_registry(&registry, DEFAULT_GRACE);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(lock) = job_lock(&registry, "gc").await else { continue };
        let result = gc.run(false).await;
        release(lock).await;
        match result {
            Ok(r) => tracing::info!(
                links_removed = r.links_removed,
                blobs_deleted = r.blobs_deleted,
                bytes_freed = r.bytes_freed,
                "garbage collection: {}",
                r.summary()
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("signal received; finishing in-flight requests");
}

#[cfg(test)]
mod tests {
    #[test]
    fn limits_from_the_config_file() {
        let file: crate::config::ServerFile = toml::from_str(
            "[limits]\nheader_read_timeout = \"10s\"\nbody_idle_timeout = \"2m\"\nmax_connections = 64\n\
             min_body_rate = 4096\nbody_rate_window = \"30s\"\nmax_connections_per_address = 32\n",
        )
        .unwrap();
        let limits = file.limits.unwrap().limits().unwrap();
        assert_eq!(limits.header_read_timeout, std::time::Duration::from_secs(10));
        assert_eq!(limits.body_idle_timeout, std::time::Duration::from_secs(120));
        assert_eq!(limits.max_connections, 64);
        assert_eq!(limits.max_header_bytes, wharf_server::Limits::default().max_header_bytes);
        assert_eq!(
            (limits.min_body_rate, limits.body_rate_window),
            (4096, std::time::Duration::from_secs(30))
        );
        assert_eq!(limits.max_connections_per_address, 32);
        for bad in [
            "max_connections = 0",
            "header_read_timeout = \"0s\"",
            "max_header_bytes = 10",
            "body_idle_timeout = \"soon\"",
            "body_rate_window = \"0s\"",
            "max_blob_bytes = 0",
            "max_connections_per_address = 0",
        ] {
            let file: crate::config::ServerFile = toml::from_str(&format!("[limits]\n{bad}\n")).unwrap();
            assert!(file.limits.unwrap().limits().is_err(), "{bad}");
        }
        assert!(toml::from_str::<crate::config::ServerFile>("[limits]\nmax_conections = 5\n").is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
