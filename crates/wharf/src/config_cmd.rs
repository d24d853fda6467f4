//! `wharf config check FILE`: validate a server config exactly as `wharf serve` would (without
//! opening a store or binding a port), then print the effective config as TOML with every
//! secret replaced by `<redacted>`.

use std::path::PathBuf;

use anyhow::Context;

use crate::config::{ServerFile, auth_config, mirror_specs, registry_config, tls_config};

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCommand {
    /// Validate a server config and print it (defaults filled in, secrets redacted).
    Check {
        /// The server's TOML configuration file.
        file: PathBuf,
    },
}

/// Keys whose values are secrets, wherever they appear in the file.
const SECRET_KEYS: &[&str] =
    &["bind_password", "token_key", "secret", "secret_access_key", "credentials", "password"];
pub const REDACTED: &str = "<redacted>";

pub async fn run(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Check { file } => {
            let text = check(&file)?;
            print!("{text}");
            Ok(())
        }
    }
}

/// Everything `serve` checks before it opens the stores; the effective config as TOML.
pub fn check(path: &std::path::Path) -> anyhow::Result<String> {
    let file = ServerFile::load(path)?;
    let bad = || format!("{} is not a valid server config", path.display());
    registry_config(&file, None).with_context(bad)?;
    auth_config(&file).with_context(bad)?;
    tls_config(&file, None, None).with_context(bad)?;
    let mirrors = mirror_specs(&file).with_context(bad)?;
    crate::mirror_runs::board(&mirrors).with_context(bad)?;
    if let Some(storage) = &file.storage {
        storage.s3_config().with_context(bad)?;
    }
    if let Some(url) = &file.database
        && !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        anyhow::bail!("{}: database {:?} must be sqlite://PATH or postgres://...", bad(), redact_url(url));
    }
    // The raw document keeps every field the user wrote; the defaults serve would use fill in
    // the rest.
    let raw = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&raw).with_context(|| format!("parsing config {}", path.display()))?;
    fill_defaults(&mut doc);
    redact(&mut doc);
    Ok(toml::to_string(&doc)?)
}

fn fill_defaults(doc: &mut toml::Table) {
    use toml::Value;
    doc.entry("addr").or_insert_with(|| Value::String("127.0.0.1:5000".into()));
    let data_dir = doc
        .entry("data_dir")
        .or_insert_with(|| Value::String("./wharf-data".into()))
        .as_str()
        .unwrap_or("./wharf-data")
        .to_owned();
    let sqlite = format!("sqlite://{}", std::path::Path::new(&data_dir).join("metadata.db").display());
    doc.entry("database").or_insert_with(|| Value::String(sqlite));
    doc.entry("upload_expiry_hours").or_insert(Value::Integer(24));
    let policy = doc.entry("index_policy").or_insert_with(|| Value::Table(Default::default()));
    if let Some(p) = policy.as_table_mut() {
        p.entry("default").or_insert_with(|| Value::String("complete".into()));
    }
    let storage = doc.entry("storage").or_insert_with(|| Value::Table(Default::default()));
    if let Some(s) = storage.as_table_mut() {
        s.entry("kind").or_insert_with(|| Value::String("filesystem".into()));
    }
}

/// Replace every secret, at any depth, by `<redacted>`; hide the password of a database URL.
fn redact(table: &mut toml::Table) {
    for (key, value) in table.iter_mut() {
        if SECRET_KEYS.contains(&key.as_str()) {
            *value = toml::Value::String(REDACTED.into());
            continue;
        }
        if key == "database"
            && let toml::Value::String(url) = value
        {
            *url = redact_url(url);
        }
        redact_value(value);
    }
}

fn redact_value(value: &mut toml::Value) {
    match value {
        toml::Value::Table(t) => redact(t),
        toml::Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

fn redact_url(url: &str) -> String {
    crate::serve::redact(url).replace(":***@", &format!(":{REDACTED}@"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_at_every_depth() {
        let mut doc: toml::Table = toml::from_str(
            r#"
            database = "postgres://wharf:hunter2@db/wharf"
            [auth]
            token_key = "k"
            [auth.ldap]
            bind_password = "b"
            [[webhooks]]
            url = "http://h/x"
            secret = "s"
            [[upstreams]]
            credentials = "u:p"
            "#,
        )
        .unwrap();
        redact(&mut doc);
        let text = toml::to_string(&doc).unwrap();
        for secret in ["hunter2", "\"k\"", "\"b\"", "\"s\"", "u:p"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("postgres://wharf:<redacted>@db/wharf"), "{text}");
        assert!(text.contains("url = \"http://h/x\""), "{text}");
    }
}
