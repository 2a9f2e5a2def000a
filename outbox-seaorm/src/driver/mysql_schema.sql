-- The outbox tables on MariaDB 10.6+ (MySQL 8 is not tested). Names and ids are utf8mb4 with
-- a binary collation: compared byte for byte, as on PostgreSQL and SQLite, so `Order-1` and
-- `order-1` are two aggregates everywhere.
-- No partial indexes: `status` leads the claim index so pending rows are one range.
CREATE TABLE IF NOT EXISTS {messages} (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id BINARY(16) NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    position BIGINT NOT NULL,
    event_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    event_version INT NOT NULL,
    payload JSON NOT NULL,
    headers JSON NOT NULL,
    occurred_at DATETIME(6) NOT NULL,
    not_before DATETIME(6) NULL,
    available_at DATETIME(6) NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'pending',
    attempts INT NOT NULL DEFAULT 0,
    claims INT NOT NULL DEFAULT 0,
    crashes INT NOT NULL DEFAULT 0,
    locked_by VARCHAR(128) NULL,
    locked_until DATETIME(6) NULL,
    -- A fresh value per claim: every later write of the claiming relay must match it, so
    -- a relay whose lease lapsed and was taken over cannot write over the new holder.
    claim_token BIGINT NULL,
    last_error TEXT CHARACTER SET utf8mb4 NULL,
    last_error_kind VARCHAR(32) NULL,
    delivered_at DATETIME(6) NULL,
    UNIQUE KEY {messages_base}_id (id),
    KEY {messages_base}_pending (status, seq),
    KEY {messages_base}_aggregate (aggregate_type, aggregate_id, status, position),
    KEY {messages_base}_delivered (status, delivered_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
CREATE TABLE IF NOT EXISTS {streams} (
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    last_position BIGINT NOT NULL,
    blocked_until DATETIME(6) NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
CREATE TABLE IF NOT EXISTS {deliveries} (
    message_id BINARY(16) NOT NULL,
    handler VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status VARCHAR(16) NOT NULL,
    attempts INT NOT NULL,
    last_error TEXT CHARACTER SET utf8mb4 NULL,
    last_error_kind VARCHAR(32) NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (message_id, handler)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
CREATE TABLE IF NOT EXISTS {inbox} (
    consumer VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    message_id BINARY(16) NOT NULL,
    processed_at DATETIME(6) NOT NULL,
    PRIMARY KEY (consumer, message_id),
    KEY {inbox_base}_processed (processed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
-- Named locks with an expiry, held by one relay at a time (retention).
CREATE TABLE IF NOT EXISTS {locks} (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(128) NULL,
    locked_until DATETIME(6) NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
-- Running relays: what each handles and when it last said it was alive (command line, dashboard).
CREATE TABLE IF NOT EXISTS {relays} (
    id VARCHAR(128) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL,
    version VARCHAR(64) NOT NULL,
    started_at DATETIME(6) NOT NULL,
    heartbeat_at DATETIME(6) NOT NULL,
    stopped_at DATETIME(6) NULL,
    lease_ms BIGINT NOT NULL,
    handled LONGTEXT NOT NULL,
    held INT NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
-- Tables created by an earlier version get the claim token (idempotent).
ALTER TABLE {messages} ADD COLUMN IF NOT EXISTS claim_token BIGINT NULL;
