-- The outbox's statements on MariaDB. `:name` is a parameter, `{table}` a table name.
-- Durations are microseconds (`INTERVAL :after MICROSECOND`); time is `UTC_TIMESTAMP(6)`,
-- whatever the session's time zone.

-- name: check_messages
SELECT seq, id, aggregate_type, aggregate_id, position, event_type, event_version, payload,
  headers, occurred_at, not_before, available_at, status, attempts, claims, crashes, locked_by,
  locked_until, last_error, last_error_kind, delivered_at, claim_token FROM {messages} WHERE 1 = 0
-- name: check_deliveries
SELECT message_id, handler, status, attempts, last_error, last_error_kind, updated_at
FROM {deliveries} WHERE 1 = 0
-- name: check_streams
SELECT aggregate_type, aggregate_id, last_position, blocked_until FROM {streams} WHERE 1 = 0
-- name: check_inbox
SELECT consumer, message_id, processed_at FROM {inbox} WHERE 1 = 0
-- name: check_locks
SELECT name, holder, locked_until FROM {locks} WHERE 1 = 0

-- The window of available rows, locked; rows locked by another claim are skipped.
-- name: window
SELECT seq, id, aggregate_type, aggregate_id, position, event_type, event_version, payload,
  headers, occurred_at, not_before, attempts, claims, crashes, last_error_kind
FROM {messages}
WHERE status = 'pending' AND available_at <= UTC_TIMESTAMP(6)
  AND (locked_until IS NULL OR locked_until < UTC_TIMESTAMP(6)) AND seq NOT IN (:held)
ORDER BY seq LIMIT :limit
FOR UPDATE SKIP LOCKED

-- name: lease
UPDATE {messages}
SET locked_by = :relay, claim_token = :token,
  locked_until = UTC_TIMESTAMP(6) + INTERVAL :lease MICROSECOND,
  claims = claims + 1
WHERE seq IN (:seqs)

-- name: prior_deliveries
SELECT d.message_id, d.handler, d.status, d.attempts FROM {deliveries} d
JOIN {messages} m ON m.id = d.message_id WHERE m.seq IN (:seqs)

-- name: extend_leases
UPDATE {messages} SET locked_until = UTC_TIMESTAMP(6) + INTERVAL :lease MICROSECOND
WHERE seq IN (:seqs) AND locked_by = :relay AND claim_token IN (:tokens)

-- Which of these rows the relay still holds under these claims (after extending leases).
-- name: still_held
SELECT seq FROM {messages} WHERE seq IN (:seqs) AND locked_by = :relay AND claim_token IN (:tokens)

-- Who holds these rows now, to tell an outcome this relay already wrote (its claim's token,
-- no lease) from one another relay took over.
-- name: fates
SELECT seq, claim_token, locked_by FROM {messages} WHERE seq IN (:seqs)

-- name: count_crash
UPDATE {messages} SET crashes = crashes + 1 WHERE seq = :seq AND locked_by = :relay AND claim_token = :token

-- name: mark_delivered
UPDATE {messages} SET status = 'delivered', delivered_at = UTC_TIMESTAMP(6), locked_by = NULL,
  locked_until = NULL, last_error = NULL, last_error_kind = NULL, attempts = attempts + 1,
  claims = 0, crashes = 0
WHERE seq IN (:seqs) AND locked_by = :relay AND claim_token IN (:tokens)

-- name: delete_now
DELETE FROM {messages} WHERE seq IN (:seqs) AND locked_by = :relay AND claim_token IN (:tokens)

-- name: delete_deliveries_held
DELETE FROM {deliveries} WHERE message_id IN (
  SELECT id FROM {messages} WHERE seq = :seq AND locked_by = :relay AND claim_token = :token)

-- name: delete_held
DELETE FROM {messages} WHERE seq = :seq AND locked_by = :relay AND claim_token = :token

-- name: write_outcome
UPDATE {messages} SET status = :status,
  available_at = UTC_TIMESTAMP(6) + INTERVAL :after MICROSECOND,
  last_error = :error, last_error_kind = :kind,
  delivered_at = CASE WHEN :status = 'delivered' THEN UTC_TIMESTAMP(6) END,
  locked_by = NULL, locked_until = NULL,
  attempts = attempts + :ran, claims = 0, crashes = 0
WHERE seq = :seq AND locked_by = :relay AND claim_token = :token

-- name: upsert_delivery
INSERT INTO {deliveries} (message_id, handler, status, attempts, last_error, last_error_kind, updated_at)
VALUES (:message_id, :handler, :status, :attempts, :error, :kind, UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE status = VALUES(status), attempts = VALUES(attempts),
  last_error = VALUES(last_error), last_error_kind = VALUES(last_error_kind),
  updated_at = VALUES(updated_at)

-- Given back unrun, undoing only this claim: a count above 1 (a relay died holding it) stays.
-- name: unclaim
UPDATE {messages} SET locked_by = NULL, locked_until = NULL, claims = GREATEST(claims - 1, 0)
WHERE seq IN (:seqs) AND locked_by = :relay AND claim_token IN (:tokens)

-- name: release
UPDATE {messages} SET locked_by = NULL, locked_until = NULL, claims = 0
WHERE seq IN (:seqs) AND locked_by = :relay AND claim_token IN (:tokens)

-- name: hold_stream
UPDATE {streams} SET blocked_until = UTC_TIMESTAMP(6) + INTERVAL :after MICROSECOND
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id

-- name: hold_followers
UPDATE {messages}
SET available_at = GREATEST(available_at, UTC_TIMESTAMP(6) + INTERVAL :after MICROSECOND)
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id AND status = 'pending'
  AND position > :position AND not_before IS NULL
  AND (locked_until IS NULL OR locked_until < UTC_TIMESTAMP(6))

-- name: block_stream
UPDATE {streams} SET blocked_until = '9999-12-31 00:00:00'
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id

-- name: block_followers
UPDATE {messages} SET available_at = '9999-12-31 00:00:00'
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id AND status = 'pending'
  AND position > :position AND not_before IS NULL
  AND (locked_until IS NULL OR locked_until < UTC_TIMESTAMP(6))

-- name: unblock_stream
UPDATE {streams} SET blocked_until = NULL
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id

-- name: unblock_followers
UPDATE {messages} SET available_at = UTC_TIMESTAMP(6)
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id AND status = 'pending'
  AND not_before IS NULL AND last_error_kind IS NULL AND available_at > UTC_TIMESTAMP(6)

-- name: lock_row
INSERT IGNORE INTO {locks} (name) VALUES (:name)

-- name: take_lock
UPDATE {locks} SET holder = :holder, locked_until = UTC_TIMESTAMP(6) + INTERVAL :hold MICROSECOND
WHERE name = :name AND (holder IS NULL OR locked_until < UTC_TIMESTAMP(6) OR holder = :holder)

-- name: unlock
UPDATE {locks} SET holder = NULL, locked_until = NULL WHERE name = :name AND holder = :holder

-- name: old_delivered
SELECT seq FROM {messages}
WHERE status = 'delivered' AND delivered_at < UTC_TIMESTAMP(6) - INTERVAL :age MICROSECOND
ORDER BY delivered_at LIMIT :limit

-- name: delete_deliveries_of
DELETE FROM {deliveries} WHERE message_id IN (SELECT id FROM {messages} WHERE seq IN (:seqs))

-- name: delete_delivered_rows
DELETE FROM {messages} WHERE seq IN (:seqs) AND status = 'delivered'

-- name: delete_inbox
DELETE FROM {inbox} WHERE processed_at < UTC_TIMESTAMP(6) - INTERVAL :age MICROSECOND
ORDER BY processed_at LIMIT :limit

-- name: mark_processed
INSERT IGNORE INTO {inbox} (consumer, message_id, processed_at)
VALUES (:consumer, :message_id, UTC_TIMESTAMP(6))

-- name: counts
SELECT status, COUNT(*) AS n FROM {messages} GROUP BY status

-- name: count_unknown_type
SELECT COUNT(*) AS n FROM {messages}
WHERE status = 'pending' AND last_error_kind = 'unknown_event_type'

-- name: dead_letters
SELECT seq, id, position, event_type, aggregate_type, aggregate_id, attempts, last_error,
  last_error_kind, occurred_at
FROM {messages} WHERE status = 'dead' ORDER BY seq LIMIT :limit

-- name: deliveries_of
SELECT d.message_id, d.handler, d.status, d.attempts, d.last_error, d.last_error_kind
FROM {deliveries} d JOIN {messages} m ON m.id = d.message_id
WHERE m.seq IN (:seqs) ORDER BY d.handler

-- name: dead_message
SELECT aggregate_type, aggregate_id FROM {messages} WHERE id = :id AND status IN ('dead', 'unhandled') FOR UPDATE

-- name: requeue
UPDATE {messages} SET status = 'pending', available_at = UTC_TIMESTAMP(6), attempts = 0,
  claims = 0, crashes = 0, locked_by = NULL, locked_until = NULL
WHERE id = :id AND status IN ('dead', 'unhandled')

-- name: requeue_deliveries
UPDATE {deliveries} SET status = 'failed', attempts = 0, updated_at = UTC_TIMESTAMP(6)
WHERE message_id = :id AND status = 'dead'

-- name: requeue_delivery
UPDATE {deliveries} SET status = 'failed', attempts = 0, updated_at = UTC_TIMESTAMP(6)
WHERE message_id = :id AND status = 'dead' AND handler = :handler

-- name: discardable
SELECT aggregate_type, aggregate_id FROM {messages}
WHERE id = :id AND (status IN ('dead', 'unhandled') OR (status = 'pending'
  AND (locked_until IS NULL OR locked_until < UTC_TIMESTAMP(6))))
FOR UPDATE

-- name: delete_deliveries_by_id
DELETE FROM {deliveries} WHERE message_id = :id

-- name: delete_by_id
DELETE FROM {messages} WHERE id = :id

-- name: check_relays
SELECT id, host, version, started_at, heartbeat_at, stopped_at, lease_ms, handled, held
FROM {relays} WHERE 1 = 0

-- name: register_relay
INSERT INTO {relays} (id, host, version, started_at, heartbeat_at, lease_ms, handled, held)
VALUES (:id, :host, :version, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), :lease_ms, :handled, 0)
ON DUPLICATE KEY UPDATE host = VALUES(host), version = VALUES(version), started_at = VALUES(started_at), heartbeat_at = VALUES(heartbeat_at), stopped_at = NULL, lease_ms = VALUES(lease_ms), handled = VALUES(handled), held = 0

-- name: relay_heartbeat
UPDATE {relays} SET heartbeat_at = UTC_TIMESTAMP(6), held = :held WHERE id = :id

-- name: relay_stopped
UPDATE {relays} SET stopped_at = UTC_TIMESTAMP(6), heartbeat_at = UTC_TIMESTAMP(6), held = 0 WHERE id = :id

-- name: forget_stopped_relays
DELETE FROM {relays} WHERE stopped_at IS NOT NULL AND stopped_at < UTC_TIMESTAMP(6) - INTERVAL :age MICROSECOND

-- name: relays
SELECT id, host, version, started_at, heartbeat_at, stopped_at, lease_ms, handled, held,
  CAST(TIMESTAMPDIFF(MICROSECOND, heartbeat_at, UTC_TIMESTAMP(6)) / 1000 AS SIGNED) AS silent_ms
FROM {relays} ORDER BY started_at

-- What the relay reports as gauges: from the pending and dead rows only (the status-led or
-- partial indexes), never the delivered history.
-- name: gauges
SELECT
  (SELECT COUNT(*) FROM {messages} WHERE status = 'pending') AS pending,
  (SELECT COUNT(*) FROM {messages} WHERE status = 'dead' AND status <> 'delivered') AS dead,
  (SELECT COUNT(*) FROM {messages} WHERE status = 'unhandled' AND status <> 'delivered') AS unhandled,
  (SELECT COUNT(*) FROM {messages} WHERE status = 'pending'
     AND last_error_kind = 'unknown_event_type') AS unknown,
  -- The oldest message that is due: a delayed one counts from its `not_before`, not before.
  (SELECT COALESCE(not_before, occurred_at) FROM {messages} WHERE status = 'pending'
     AND (not_before IS NULL OR not_before <= UTC_TIMESTAMP(6)) ORDER BY seq LIMIT 1) AS oldest

-- The dashboard's charts and handler table. Minutes are counted back from the database's now
-- (0 = the current minute); lags are milliseconds from recording to delivery.
-- name: delivered_per_minute
SELECT CAST(TIMESTAMPDIFF(MINUTE, delivered_at, UTC_TIMESTAMP(6)) AS SIGNED) AS minute,
  COUNT(*) AS n
FROM {messages} WHERE status = 'delivered' AND delivered_at >= UTC_TIMESTAMP(6) - INTERVAL 1 HOUR
GROUP BY 1

-- A delivery's row keeps its latest outcome only: a failure counts in the minute it was the
-- latest, and no more once the delivery succeeded.
-- name: failed_per_minute
SELECT CAST(TIMESTAMPDIFF(MINUTE, updated_at, UTC_TIMESTAMP(6)) AS SIGNED) AS minute,
  COUNT(*) AS n
FROM {deliveries} WHERE status IN ('failed', 'dead') AND updated_at >= UTC_TIMESTAMP(6) - INTERVAL 1 HOUR
GROUP BY 1

-- name: handler_counts
SELECT handler, status, COUNT(*) AS n FROM {deliveries} GROUP BY handler, status

-- name: handler_lags
SELECT d.handler,
  CAST(TIMESTAMPDIFF(MICROSECOND, m.occurred_at, d.updated_at) DIV 1000 AS SIGNED) AS lag_ms
FROM {deliveries} d JOIN {messages} m ON m.id = d.message_id
WHERE d.status = 'delivered' ORDER BY d.updated_at DESC LIMIT :limit

-- name: message_lags
SELECT CAST(TIMESTAMPDIFF(MICROSECOND, occurred_at, delivered_at) DIV 1000 AS SIGNED) AS lag_ms
FROM {messages} WHERE status = 'delivered' AND delivered_at >= UTC_TIMESTAMP(6) - INTERVAL 1 HOUR
ORDER BY delivered_at DESC LIMIT :limit
