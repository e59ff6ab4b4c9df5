-- Alerts: the worker's own bookkeeping of what went wrong.

-- name: insert_alert
INSERT INTO worker_alerts (type, level, job, message, metadata)
VALUES (%(type)s, %(level)s, %(job)s, %(message)s, %(metadata)s)
RETURNING id, created_at;

-- name: latest_rule_alerts
-- The latest alert of each run-level rule for a job. A rule's streak is firing until a
-- JOB_RECOVERED row for the same rule follows it: worker_alerts alone holds the state.
SELECT DISTINCT ON (metadata->>'rule') metadata->>'rule' AS rule, type
  FROM worker_alerts
 WHERE job = %(job)s AND type = ANY(%(types)s) AND metadata->>'rule' = ANY(%(rules)s)
 ORDER BY metadata->>'rule', id DESC;

-- name: alerts
SELECT id, type, level, job, message, metadata, created_at, acknowledged_at
  FROM worker_alerts
 ORDER BY created_at DESC
 LIMIT %(limit)s;

-- name: open_alerts
-- Those nobody acknowledged yet: walks the partial index of open alerts.
SELECT id, type, level, job, message, metadata, created_at, acknowledged_at
  FROM worker_alerts
 WHERE acknowledged_at IS NULL
 ORDER BY created_at DESC
 LIMIT %(limit)s;

-- name: ack_alert
UPDATE worker_alerts
   SET acknowledged_at = coalesce(acknowledged_at, now())
 WHERE id = %(id)s
RETURNING id, acknowledged_at;
