//! Background work that must run on one replica at a time (garbage collection, upload expiry,
//! scheduled mirrors): PostgreSQL session advisory locks. SQLite serves one process, so there
//! the lock is always granted.

use sqlx::Any;
use sqlx::pool::PoolConnection;

use super::{Backend, MetadataStore};
use crate::Result;

/// A held job lock; released by [`JobLock::release`], or when dropped (the connection that
/// holds it is closed, which releases it on the server).
pub struct JobLock {
    conn: Option<PoolConnection<Any>>,
    key: i64,
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock").field("key", &self.key).finish()
    }
}

/// A stable 63-bit key for a job name (FNV-1a), the same on every replica and release.
fn job_key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"wharf-job:".iter().chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

impl MetadataStore {
    /// Takes the lock named `name` if no other replica holds it: `None` when one does.
    pub async fn try_job_lock(&self, name: &str) -> Result<Option<JobLock>> {
        let key = job_key(name);
        if self.backend == Backend::Sqlite {
            return Ok(Some(JobLock { conn: None, key }));
        }
        let mut conn = self.write.acquire().await?;
        let taken: bool =
            sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({key})")).fetch_one(&mut *conn).await?;
        Ok(taken.then_some(JobLock { conn: Some(conn), key }))
    }
}

impl JobLock {
    /// Releases the lock and returns its connection to the pool.
    pub async fn release(mut self) {
        let Some(mut conn) = self.conn.take() else { return };
        let unlocked =
            sqlx::query(&format!("SELECT pg_advisory_unlock({})", self.key)).execute(&mut *conn).await;
        if unlocked.is_err() {
            // Closing the connection releases the lock on the server.
            drop(conn.detach());
        }
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn job_keys_are_stable_and_distinct() {
        assert_eq!(super::job_key("gc"), super::job_key("gc"));
        assert_ne!(super::job_key("gc"), super::job_key("upload-expiry"));
        assert!(super::job_key("gc") >= 0);
    }
}
