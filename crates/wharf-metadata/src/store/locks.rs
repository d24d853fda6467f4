//! Named locks that keep a job (a scheduled mirror run) on one replica at a time.
//!
//! PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock`) on one pooled connection
//! that the [`NamedLock`] keeps until it is released; if the process dies, the session ends and
//! PostgreSQL drops the lock. SQLite is one process's database: the lock is a no-op.

use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};

use super::{Backend, MetadataStore};
use crate::Result;

/// A lock taken by [`MetadataStore::try_lock`]. Call [`NamedLock::release`]; dropped without
/// it, the connection is closed instead of going back to the pool, which also frees the lock.
#[must_use = "the lock is held until released or dropped"]
pub struct NamedLock {
    conn: Option<PoolConnection<Any>>,
    key: i64,
}

impl std::fmt::Debug for NamedLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedLock").field("key", &self.key).field("advisory", &self.conn.is_some()).finish()
    }
}

/// A stable 64-bit key for `name` (FNV-1a over a namespaced name): the same on every replica
/// and every build, unlike std's randomly seeded hasher.
pub(crate) fn lock_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "wharf-lock:".bytes().chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

impl MetadataStore {
    /// Take the lock `name` if nobody holds it (on any replica sharing this database);
    /// `None` when it is held elsewhere. Always granted on SQLite.
    pub async fn try_lock(&self, name: &str) -> Result<Option<NamedLock>> {
        let key = lock_key(name);
        if self.backend == Backend::Sqlite {
            return Ok(Some(NamedLock { conn: None, key }));
        }
        let mut conn = self.write.acquire().await?;
        let row =
            sqlx::query("SELECT pg_try_advisory_lock($1) AS got").bind(key).fetch_one(&mut *conn).await?;
        if row.try_get::<bool, _>("got")? { Ok(Some(NamedLock { conn: Some(conn), key })) } else { Ok(None) }
    }
}

impl NamedLock {
    /// Give the lock back (the connection returns to the pool).
    pub async fn release(mut self) -> Result<()> {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1) AS done")
                .bind(self.key)
                .fetch_one(&mut *conn)
                .await
                .and_then(|r| r.try_get::<bool, _>("done"));
            if !matches!(unlocked, Ok(true)) {
                // Do not hand a connection that may still hold the lock back to the pool.
                drop(conn.detach());
                unlocked?;
            }
        }
        Ok(())
    }
}

impl Drop for NamedLock {
    fn drop(&mut self) {
        // Not released (a panic, a cancelled task): close the session, which frees the lock.
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("mirror:a"), super::lock_key("mirror:a"));
        assert_ne!(super::lock_key("mirror:a"), super::lock_key("mirror:b"));
    }
}
