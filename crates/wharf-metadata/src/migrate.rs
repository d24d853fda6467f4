//! Versioned schema migrations, one SQL file per version and backend, embedded in the binary.
//!
//! Applied in one transaction at connect and recorded in `wharf_schema_version`. On PostgreSQL
//! the transaction first takes a transaction-level advisory lock, so that several servers
//! starting at once against one database apply each migration exactly once; on SQLite the
//! transaction is `BEGIN IMMEDIATE`, which takes the database's write lock up front.

use sqlx::{Any, Row, Transaction};

use crate::store::{Backend, now};
use crate::{MetadataError, Result};

/// `(version, sql)`, in ascending version order. Versions are never edited once released: add a
/// new file to both lists instead.
const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, include_str!("../migrations/sqlite/0002_tag_upstream_check.sql")),
    (3, include_str!("../migrations/sqlite/0003_webhook_outbox.sql")),
];
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_initial.sql")),
    (2, include_str!("../migrations/postgres/0002_tag_upstream_check.sql")),
    (3, include_str!("../migrations/postgres/0003_webhook_outbox.sql")),
];

/// Key of the PostgreSQL advisory lock that serialises migrations ("wharfmig" in ASCII).
const PG_LOCK_KEY: i64 = 0x7768_6172_666d_6967;

fn migrations(backend: Backend) -> &'static [(i64, &'static str)] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

/// The newest schema version this build knows.
pub(crate) fn latest(backend: Backend) -> i64 {
    migrations(backend).last().map_or(0, |m| m.0)
}

/// Splits a migration file into statements: drops whole-line `--` comments, then splits on `;`.
/// Migration files keep `;` out of string literals and trailing comments.
fn statements(sql: &str) -> Vec<String> {
    let body: Vec<&str> = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect();
    body.join("\n").split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// Brings the schema up to date inside `tx` (which the caller commits). Returns the version the
/// database was at before.
pub(crate) async fn run(tx: &mut Transaction<'static, Any>, backend: Backend) -> Result<i64> {
    if backend == Backend::Postgres {
        sqlx::query(&format!("SELECT CAST(1 AS BIGINT) FROM pg_advisory_xact_lock({PG_LOCK_KEY})"))
            .execute(&mut **tx)
            .await?;
    }
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS wharf_schema_version (\
            version BIGINT NOT NULL PRIMARY KEY, \
            applied_at BIGINT NOT NULL)",
    )
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query("SELECT CAST(MAX(version) AS BIGINT) FROM wharf_schema_version")
        .fetch_one(&mut **tx)
        .await?;
    let current: i64 = row.try_get::<Option<i64>, _>(0)?.unwrap_or(0);
    let latest = latest(backend);
    if current > latest {
        return Err(MetadataError::Corrupt(format!(
            "schema version {current} is newer than this build of wharf understands \
             ({latest}); upgrade wharf"
        )));
    }
    for &(version, sql) in migrations(backend) {
        if version <= current {
            continue;
        }
        for stmt in statements(sql) {
            sqlx::query(&stmt).execute(&mut **tx).await?;
        }
        sqlx::query("INSERT INTO wharf_schema_version (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(now())
            .execute(&mut **tx)
            .await?;
        tracing::info!(version, backend = backend.name(), "applied metadata schema migration");
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_match_across_backends() {
        for list in [SQLITE, POSTGRES] {
            for (i, (v, _)) in list.iter().enumerate() {
                assert_eq!(*v, i as i64 + 1);
            }
        }
        assert_eq!(SQLITE.len(), POSTGRES.len());
    }

    #[test]
    fn split_skips_comments_and_blanks() {
        let s: Vec<String> = statements("-- a; comment\nCREATE TABLE a (x INT);\n\n-- tail\n");
        assert_eq!(s, vec!["CREATE TABLE a (x INT)".to_owned()]);
    }
}
