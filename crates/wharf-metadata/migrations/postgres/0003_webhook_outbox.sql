-- Webhook outbox: one row per (event, webhook) still to deliver. A push or delete writes its
-- rows in the transaction that changes the manifest, so a committed change always has its
-- events and a crash never loses one; the server's delivery task claims due rows (FOR UPDATE
-- SKIP LOCKED plus a lease, so that one replica delivers each), POSTs them and deletes them
-- once the receiver took them. Times are unix milliseconds: retries back off from one second.
CREATE TABLE webhook_outbox (
    id               BIGSERIAL PRIMARY KEY,
    target           TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    lease_until      BIGINT  NOT NULL DEFAULT 0,
    dead             BIGINT  NOT NULL DEFAULT 0,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (dead, next_attempt_at);
