-- 1M delivered rows (the history), 1000 pending, 100 dead with a failed delivery each.
INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, event_type, event_version,
  payload, headers, occurred_at, available_at, status, attempts, delivered_at)
SELECT gen_random_uuid(), 'order', 'o-' || (g % 1000), g / 1000 + 1, 'order.placed', 1,
  '{"amount":100}', '{}', now() - interval '2 days' + g * interval '100 ms',
  now() - interval '2 days' + g * interval '100 ms', 'delivered', 1,
  now() - interval '2 days' + g * interval '100 ms'
FROM generate_series(1, 1000000) g;
INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, event_type, event_version,
  payload, headers, occurred_at, available_at, status, attempts)
SELECT gen_random_uuid(), 'invoice', 'i-' || g, 1, 'invoice.sent', 1, '{}', '{}',
  now() - interval '5 minutes', now() + interval '1 hour', 'pending', 0
FROM generate_series(1, 1000) g;
WITH d AS (
  INSERT INTO outbox_messages (id, aggregate_type, aggregate_id, position, event_type, event_version,
    payload, headers, occurred_at, available_at, status, attempts, last_error, last_error_kind)
  SELECT gen_random_uuid(), 'mail', 'm-' || g, 1, 'mail.queued', 1, '{}', '{}',
    now() - interval '1 hour', now(), 'dead', 5, 'mailbox full', 'handler_failed'
  FROM generate_series(1, 100) g RETURNING id)
INSERT INTO outbox_deliveries (message_id, handler, status, attempts, last_error, last_error_kind, updated_at)
SELECT id, 'send-mail', 'dead', 5, 'mailbox full', 'handler_failed', now() FROM d;
VACUUM ANALYZE outbox_messages;
