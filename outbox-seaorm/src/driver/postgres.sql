-- The outbox's statements on PostgreSQL. `:name` is a parameter, `{table}` a table name.
-- Durations are seconds (`make_interval(secs => ..)`); time is the server's `now()`.

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

-- Any available message, oldest first; rows another claim is looking at are skipped.
-- name: claim_any
UPDATE {messages} AS o
SET locked_by = :relay, claim_token = :token, locked_until = now() + make_interval(secs => :lease), claims = o.claims + 1
FROM (
  SELECT seq FROM {messages}
  WHERE status = 'pending' AND available_at <= now() AND (locked_until IS NULL OR locked_until < now())
    AND NOT (seq = ANY(:held))
  ORDER BY seq LIMIT :limit
  FOR UPDATE SKIP LOCKED
) AS c
WHERE o.seq = c.seq
RETURNING o.seq, o.id, o.aggregate_type, o.aggregate_id, o.position, o.event_type,
  o.event_version, o.payload::text AS payload, o.headers::text AS headers, o.occurred_at,
  o.not_before, o.attempts, o.claims, o.crashes, o.last_error_kind

-- Runs of messages that start at their aggregate's head, from a bounded window of available
-- rows (so the cost is O(window), not O(backlog)):
--   w      the first :window available rows, locked (others' windows skip them);
--   runs   per aggregate, `position - rank` is the same for a run without gaps;
--   heads  the first row of each aggregate in the window...
--   ok     ...that nothing earlier in its aggregate holds back (a pending row, leased or
--          waiting for a retry, or a dead one when dead messages block), but for rows this
--          relay runs in the aggregate's chain (:passable: the run is queued behind them);
--   pick   the runs that start at such a head, and delayed rows (outside the order).
-- name: claim_ordered
WITH w AS MATERIALIZED (
  SELECT seq, aggregate_type, aggregate_id, position, not_before IS NOT NULL AS delayed
  FROM {messages}
  WHERE status = 'pending' AND available_at <= now() AND (locked_until IS NULL OR locked_until < now())
    AND NOT (seq = ANY(:held))
  ORDER BY seq LIMIT :window
  FOR UPDATE SKIP LOCKED
), runs AS (
  SELECT seq, aggregate_type, aggregate_id, position,
    position - ROW_NUMBER() OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY position) AS base
  FROM w WHERE NOT delayed
), heads AS (
  SELECT aggregate_type, aggregate_id, min(position) AS first FROM runs
  GROUP BY aggregate_type, aggregate_id
), ok AS MATERIALIZED (
  SELECT h.aggregate_type, h.aggregate_id, h.first FROM heads h
  WHERE NOT EXISTS (
    SELECT 1 FROM {messages} b
    WHERE b.aggregate_type = h.aggregate_type AND b.aggregate_id = h.aggregate_id
      AND b.position < h.first AND b.status <> 'delivered' AND b.not_before IS NULL
      AND (b.status = 'pending' OR (:block AND b.status = 'dead'))
      AND NOT (b.seq = ANY(:passable)))
), pick AS (
  SELECT r.seq FROM runs r JOIN ok ON ok.aggregate_type = r.aggregate_type
    AND ok.aggregate_id = r.aggregate_id AND r.base = ok.first - 1
  UNION ALL
  SELECT seq FROM w WHERE delayed
  ORDER BY seq LIMIT :limit
)
UPDATE {messages} AS o
SET locked_by = :relay, claim_token = :token, locked_until = now() + make_interval(secs => :lease), claims = o.claims + 1
FROM pick
WHERE o.seq = pick.seq
RETURNING o.seq, o.id, o.aggregate_type, o.aggregate_id, o.position, o.event_type,
  o.event_version, o.payload::text AS payload, o.headers::text AS headers, o.occurred_at,
  o.not_before, o.attempts, o.claims, o.crashes, o.last_error_kind

-- name: prior_deliveries
SELECT d.message_id, d.handler, d.status, d.attempts FROM {deliveries} d
JOIN {messages} m ON m.id = d.message_id WHERE m.seq = ANY(:seqs)

-- name: extend_leases
UPDATE {messages} SET locked_until = now() + make_interval(secs => :lease)
WHERE seq = ANY(:seqs) AND locked_by = :relay AND claim_token = ANY(:tokens)

-- Which of these rows the relay still holds under these claims (after extending leases).
-- name: still_held
SELECT seq FROM {messages} WHERE seq = ANY(:seqs) AND locked_by = :relay AND claim_token = ANY(:tokens)

-- Who holds these rows now, to tell an outcome this relay already wrote (its claim's token,
-- no lease) from one another relay took over.
-- name: fates
SELECT seq, claim_token, locked_by FROM {messages} WHERE seq = ANY(:seqs)

-- name: count_crash
UPDATE {messages} SET crashes = crashes + 1 WHERE seq = :seq AND locked_by = :relay AND claim_token = :token

-- name: mark_delivered
UPDATE {messages} SET status = 'delivered', delivered_at = now(), locked_by = NULL,
  locked_until = NULL, last_error = NULL, last_error_kind = NULL, attempts = attempts + 1,
  claims = 0, crashes = 0
WHERE seq = ANY(:seqs) AND locked_by = :relay AND claim_token = ANY(:tokens)

-- name: delete_now
DELETE FROM {messages} WHERE seq = ANY(:seqs) AND locked_by = :relay AND claim_token = ANY(:tokens)

-- name: delete_deliveries_held
DELETE FROM {deliveries} WHERE message_id IN (
  SELECT id FROM {messages} WHERE seq = :seq AND locked_by = :relay AND claim_token = :token)

-- name: delete_held
DELETE FROM {messages} WHERE seq = :seq AND locked_by = :relay AND claim_token = :token

-- name: write_outcome
UPDATE {messages} SET status = :status,
  available_at = now() + make_interval(secs => :after),
  last_error = :error, last_error_kind = :kind,
  delivered_at = CASE WHEN :status = 'delivered' THEN now() END,
  locked_by = NULL, locked_until = NULL,
  attempts = attempts + :ran, claims = 0, crashes = 0
WHERE seq = :seq AND locked_by = :relay AND claim_token = :token

-- name: upsert_delivery
INSERT INTO {deliveries} (message_id, handler, status, attempts, last_error, last_error_kind, updated_at)
VALUES (:message_id, :handler, :status, :attempts, :error, :kind, now())
ON CONFLICT (message_id, handler) DO UPDATE SET status = excluded.status,
  attempts = excluded.attempts, last_error = excluded.last_error,
  last_error_kind = excluded.last_error_kind, updated_at = excluded.updated_at

-- Given back unrun, undoing only this claim: a count above 1 (a relay died holding it) stays.
-- name: unclaim
UPDATE {messages} SET locked_by = NULL, locked_until = NULL, claims = GREATEST(claims - 1, 0)
WHERE seq = ANY(:seqs) AND locked_by = :relay AND claim_token = ANY(:tokens)

-- name: release
UPDATE {messages} SET locked_by = NULL, locked_until = NULL, claims = 0
WHERE seq = ANY(:seqs) AND locked_by = :relay AND claim_token = ANY(:tokens)

-- name: hold_stream
UPDATE {streams} SET blocked_until = now() + make_interval(secs => :after)
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id

-- name: hold_followers
UPDATE {messages} SET available_at = GREATEST(available_at, now() + make_interval(secs => :after))
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id AND position > :position
  AND status = 'pending' AND status <> 'delivered' AND not_before IS NULL
  AND (locked_until IS NULL OR locked_until < now())

-- name: block_stream
UPDATE {streams} SET blocked_until = '9999-12-31 00:00:00+00'
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id

-- name: block_followers
UPDATE {messages} SET available_at = '9999-12-31 00:00:00+00'
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id AND position > :position
  AND status = 'pending' AND status <> 'delivered' AND not_before IS NULL
  AND (locked_until IS NULL OR locked_until < now())

-- name: unblock_stream
UPDATE {streams} SET blocked_until = NULL
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id

-- Rows that never failed themselves and wait past now were held back: release them.
-- name: unblock_followers
UPDATE {messages} SET available_at = now()
WHERE aggregate_type = :aggregate_type AND aggregate_id = :aggregate_id
  AND status = 'pending' AND status <> 'delivered' AND not_before IS NULL
  AND last_error_kind IS NULL AND available_at > now()

-- name: lock_row
INSERT INTO {locks} (name) VALUES (:name) ON CONFLICT (name) DO NOTHING

-- name: take_lock
UPDATE {locks} SET holder = :holder, locked_until = now() + make_interval(secs => :hold)
WHERE name = :name AND (holder IS NULL OR locked_until < now() OR holder = :holder)

-- name: unlock
UPDATE {locks} SET holder = NULL, locked_until = NULL WHERE name = :name AND holder = :holder

-- name: old_delivered
SELECT seq FROM {messages}
WHERE status = 'delivered' AND delivered_at < now() - make_interval(secs => :age)
ORDER BY delivered_at LIMIT :limit

-- name: delete_deliveries_of
DELETE FROM {deliveries} WHERE message_id IN (SELECT id FROM {messages} WHERE seq = ANY(:seqs))

-- name: delete_delivered_rows
DELETE FROM {messages} WHERE seq = ANY(:seqs) AND status = 'delivered'

-- name: delete_inbox
DELETE FROM {inbox} WHERE (consumer, message_id) IN (
  SELECT consumer, message_id FROM {inbox}
  WHERE processed_at < now() - make_interval(secs => :age)
  ORDER BY processed_at LIMIT :limit)

-- name: mark_processed
INSERT INTO {inbox} (consumer, message_id, processed_at) VALUES (:consumer, :message_id, now())
ON CONFLICT (consumer, message_id) DO NOTHING

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
WHERE m.seq = ANY(:seqs) ORDER BY d.handler

-- name: dead_message
SELECT aggregate_type, aggregate_id FROM {messages} WHERE id = :id AND status IN ('dead', 'unhandled') FOR UPDATE

-- name: requeue
UPDATE {messages} SET status = 'pending', available_at = now(), attempts = 0, claims = 0,
  crashes = 0, locked_by = NULL, locked_until = NULL
WHERE id = :id AND status IN ('dead', 'unhandled')

-- name: requeue_deliveries
UPDATE {deliveries} SET status = 'failed', attempts = 0, updated_at = now()
WHERE message_id = :id AND status = 'dead'

-- name: requeue_delivery
UPDATE {deliveries} SET status = 'failed', attempts = 0, updated_at = now()
WHERE message_id = :id AND status = 'dead' AND handler = :handler

-- name: discardable
SELECT aggregate_type, aggregate_id FROM {messages}
WHERE id = :id AND (status IN ('dead', 'unhandled') OR (status = 'pending' AND (locked_until IS NULL OR locked_until < now())))
FOR UPDATE

-- name: delete_deliveries_by_id
DELETE FROM {deliveries} WHERE message_id = :id

-- name: delete_by_id
DELETE FROM {messages} WHERE id = :id

-- One message (a save that recorded one event, the usual case): the general statement's
-- shape without its VALUES list, join and sort, as raw SQL giving the same guarantee writes
-- it. (Its gain was within this machine's noise in the write benchmark.)
-- name: append_one
WITH s AS (INSERT INTO {streams} AS s (aggregate_type, aggregate_id, last_position)
  VALUES (:t, :a, 1) ON CONFLICT (aggregate_type, aggregate_id)
  DO UPDATE SET last_position = s.last_position + 1
  RETURNING s.last_position, s.blocked_until)
INSERT INTO {messages} (id, aggregate_type, aggregate_id, position, event_type, event_version,
  payload, headers, occurred_at, not_before, available_at)
SELECT :id, :t, :a, s.last_position, :e, :ver, CAST(:p AS json), CAST(:h AS json), :o,
  CAST(:nb AS timestamptz), COALESCE(CAST(:nb AS timestamptz), GREATEST(now(), s.blocked_until))
FROM s

-- name: notify
SELECT pg_notify(:channel, '')

-- The messages table's fillfactor (100 when not set); no row when the table is not visible.
-- name: messages_fillfactor
SELECT COALESCE((SELECT CAST(substr(o, 12) AS INTEGER) FROM unnest(c.reloptions) AS o
  WHERE o LIKE 'fillfactor=%'), 100) AS fillfactor
FROM pg_class c WHERE c.oid = to_regclass(:table)

-- name: check_relays
SELECT id, host, version, started_at, heartbeat_at, stopped_at, lease_ms, handled, held
FROM {relays} WHERE 1 = 0

-- name: register_relay
INSERT INTO {relays} (id, host, version, started_at, heartbeat_at, lease_ms, handled, held)
VALUES (:id, :host, :version, now(), now(), :lease_ms, :handled, 0)
ON CONFLICT (id) DO UPDATE SET host = excluded.host, version = excluded.version, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, lease_ms = excluded.lease_ms, handled = excluded.handled, held = 0

-- name: relay_heartbeat
UPDATE {relays} SET heartbeat_at = now(), held = :held WHERE id = :id

-- name: relay_stopped
UPDATE {relays} SET stopped_at = now(), heartbeat_at = now(), held = 0 WHERE id = :id

-- name: forget_stopped_relays
DELETE FROM {relays} WHERE stopped_at IS NOT NULL AND stopped_at < now() - make_interval(secs => :age)

-- name: relays
SELECT id, host, version, started_at, heartbeat_at, stopped_at, lease_ms, handled, held,
  CAST(EXTRACT(EPOCH FROM (now() - heartbeat_at)) * 1000 AS BIGINT) AS silent_ms
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
     AND (not_before IS NULL OR not_before <= now()) ORDER BY seq LIMIT 1) AS oldest

-- The dashboard's charts and handler table. Minutes are counted back from the database's now
-- (0 = the current minute); lags are milliseconds from recording to delivery.
-- name: delivered_per_minute
SELECT CAST(FLOOR(EXTRACT(EPOCH FROM (now() - delivered_at)) / 60) AS BIGINT) AS minute,
  COUNT(*) AS n
FROM {messages} WHERE status = 'delivered' AND delivered_at >= now() - interval '1 hour'
GROUP BY 1

-- A delivery's row keeps its latest outcome only: a failure counts in the minute it was the
-- latest, and no more once the delivery succeeded.
-- name: failed_per_minute
SELECT CAST(FLOOR(EXTRACT(EPOCH FROM (now() - updated_at)) / 60) AS BIGINT) AS minute,
  COUNT(*) AS n
FROM {deliveries} WHERE status IN ('failed', 'dead') AND updated_at >= now() - interval '1 hour'
GROUP BY 1

-- name: handler_counts
SELECT handler, status, COUNT(*) AS n FROM {deliveries} GROUP BY handler, status

-- name: handler_lags
SELECT d.handler,
  CAST(EXTRACT(EPOCH FROM (d.updated_at - m.occurred_at)) * 1000 AS BIGINT) AS lag_ms
FROM {deliveries} d JOIN {messages} m ON m.id = d.message_id
WHERE d.status = 'delivered' ORDER BY d.updated_at DESC LIMIT :limit

-- name: message_lags
SELECT CAST(EXTRACT(EPOCH FROM (delivered_at - occurred_at)) * 1000 AS BIGINT) AS lag_ms
FROM {messages} WHERE status = 'delivered' AND delivered_at >= now() - interval '1 hour'
ORDER BY delivered_at DESC LIMIT :limit
