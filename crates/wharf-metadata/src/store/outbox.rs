//! The webhook outbox: events waiting to be delivered, one row per (event, webhook).
//!
//! Rows are written in the transaction of the change they describe (see
//! [`MetadataStore::put_manifest_with_events`]), so the queue is as durable as the registry's
//! own state. A deliverer [`claims`](MetadataStore::claim_events) due rows under a lease: on
//! PostgreSQL the claim also skips rows another replica's claim has locked (`FOR UPDATE SKIP
//! LOCKED`), and the lease keeps a claimed row away from everyone until it expires (a deliverer
//! that died mid-delivery: the row is delivered again later, at least once).

use sqlx::{Any, Row, Transaction};

use super::{Backend, MetadataStore};
use crate::{MetadataError, NewEvent, QueuedEvent, Result};

/// Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) async fn enqueue_in(tx: &mut Transaction<'static, Any>, events: &[NewEvent]) -> Result<()> {
    let ts = now_ms();
    for e in events {
        sqlx::query(
            "INSERT INTO webhook_outbox (target, event, body, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(e.target.as_str())
        .bind(e.kind.as_str())
        .bind(e.body.as_str())
        .bind(ts)
        .bind(ts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

impl MetadataStore {
    /// Queue events that belong to no other change (a mirror run finished).
    pub async fn enqueue_events(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        enqueue_in(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claim up to `limit` due rows (not dead, due, not leased) for `lease_ms`, counting the
    /// attempt. Oldest first.
    pub async fn claim_events(&self, limit: u32, lease_ms: i64) -> Result<Vec<QueuedEvent>> {
        let now = now_ms();
        let lease_until = now.saturating_add(lease_ms);
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // The lease is checked again outside the sub-select: on PostgreSQL a row claimed by a
        // concurrent transaction is re-read after its commit, and then no longer qualifies.
        let rows = sqlx::query(&format!(
            "UPDATE webhook_outbox SET lease_until = $1, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM webhook_outbox \
                          WHERE dead = 0 AND next_attempt_at <= $2 AND lease_until <= $2 \
                          ORDER BY id LIMIT $3{skip_locked}) \
               AND lease_until <= $2 \
             RETURNING id, target, event, body, attempts, created_at"
        ))
        .bind(lease_until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.write)
        .await?;
        let mut events = rows
            .iter()
            .map(|r| {
                let attempts: i64 = r.try_get("attempts")?;
                Ok(QueuedEvent {
                    id: r.try_get("id")?,
                    target: r.try_get("target")?,
                    kind: r.try_get("event")?,
                    body: r.try_get("body")?,
                    attempts: u32::try_from(attempts)
                        .map_err(|_| MetadataError::Corrupt(format!("event attempts {attempts}")))?,
                    created_at_ms: r.try_get("created_at")?,
                    lease_until_ms: lease_until,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

    /// The receiver took the event: it leaves the queue.
    pub async fn event_delivered(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM webhook_outbox WHERE id = $1").bind(id).execute(&self.write).await?;
        Ok(())
    }

    /// This process stops before it finished with a claimed event: make it due again now
    /// rather than when the lease runs out, unless the claim is no longer this one (its
    /// outcome was recorded, or the lease ran out and another deliverer holds it). An event
    /// that was never `attempted` does not keep the attempt its claim counted.
    pub async fn event_released(&self, event: &QueuedEvent, attempted: bool) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET lease_until = 0, attempts = attempts - $3 \
             WHERE id = $1 AND lease_until = $2 AND dead = 0",
        )
        .bind(event.id)
        .bind(event.lease_until_ms)
        .bind(i64::from(!attempted))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The delivery failed: try again at `next_attempt_at_ms`.
    pub async fn event_retry(&self, id: i64, next_attempt_at_ms: i64, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $2, lease_until = 0, last_error = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(next_attempt_at_ms)
        .bind(error)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Give up on the event: it stays in the table, marked dead, for an operator to look at.
    pub async fn event_dead(&self, id: i64, error: &str) -> Result<()> {
        sqlx::query("UPDATE webhook_outbox SET dead = 1, lease_until = 0, last_error = $2 WHERE id = $1")
            .bind(id)
            .bind(error)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// `(waiting, dead)`: events still to deliver, and those given up on.
    pub async fn event_queue_depth(&self) -> Result<(u64, u64)> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(CASE WHEN dead = 0 THEN 1 ELSE 0 END), 0) AS BIGINT) AS waiting, \
                    CAST(COALESCE(SUM(CASE WHEN dead = 0 THEN 0 ELSE 1 END), 0) AS BIGINT) AS dead \
             FROM webhook_outbox",
        )
        .fetch_one(&self.read)
        .await?;
        let n = |col: &str| -> Result<u64> {
            let v: i64 = row.try_get(col)?;
            u64::try_from(v).map_err(|_| MetadataError::Corrupt(format!("negative {col} {v}")))
        };
        Ok((n("waiting")?, n("dead")?))
    }
}
