-- The outbox tables on SQLite. Times are text, `YYYY-MM-DDTHH:MM:SS.fff+00:00`, so they
-- compare as strings.
-- AUTOINCREMENT: a sequence number is never reused after its row is deleted.
CREATE TABLE IF NOT EXISTS {messages} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    event_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    not_before TEXT NULL,
    available_at TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    claims INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    locked_by TEXT NULL,
    locked_until TEXT NULL,
    -- A fresh value per claim: every later write of the claiming relay must match it, so
    -- a relay whose lease lapsed and was taken over cannot write over the new holder.
    claim_token BIGINT NULL,
    last_error TEXT NULL,
    last_error_kind TEXT NULL,
    delivered_at TEXT NULL
);
-- The claim reads only pending rows, in sequence order.
CREATE INDEX IF NOT EXISTS {messages_schema}{messages_base}_pending ON {messages_table} (seq) WHERE status = 'pending';
-- The order check looks for an earlier undelivered row of the same aggregate.
CREATE UNIQUE INDEX IF NOT EXISTS {messages_schema}{messages_base}_aggregate ON {messages_table} (aggregate_type, aggregate_id, position) WHERE status <> 'delivered';
-- Retention deletes delivered rows by age.
CREATE INDEX IF NOT EXISTS {messages_schema}{messages_base}_delivered ON {messages_table} (delivered_at) WHERE status = 'delivered';
CREATE TABLE IF NOT EXISTS {streams} (
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    last_position INTEGER NOT NULL,
    blocked_until TEXT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
CREATE TABLE IF NOT EXISTS {deliveries} (
    message_id BLOB NOT NULL,
    handler TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NULL,
    last_error_kind TEXT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (message_id, handler)
);
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer TEXT NOT NULL,
    message_id BLOB NOT NULL,
    processed_at TEXT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS {inbox_schema}{inbox_base}_processed ON {inbox_table} (processed_at);
CREATE TABLE IF NOT EXISTS {locks} (
    name TEXT PRIMARY KEY,
    holder TEXT NULL,
    locked_until TEXT NULL
);
-- Running relays: what each handles and when it last said it was alive (command line, dashboard).
CREATE TABLE IF NOT EXISTS {relays} (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    version TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    stopped_at TEXT NULL,
    lease_ms INTEGER NOT NULL,
    handled TEXT NOT NULL,
    held INTEGER NOT NULL DEFAULT 0
);
