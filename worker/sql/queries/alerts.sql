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

-- name: open_alerts
-- Those nobody acknowledged yet: walks the partial index of open alerts. `run_id`: the run
-- an alert is about, as the alert path and the watchdog record it in `metadata`
-- (history.sql's `alerts` reads it the same way).
SELECT id, type, level, job, message, metadata,
       CASE WHEN jsonb_typeof(metadata->'run_id') = 'number'
            THEN (metadata->>'run_id')::bigint END AS run_id,
       created_at, acknowledged_at
  FROM worker_alerts
 WHERE acknowledged_at IS NULL
 ORDER BY created_at DESC
 LIMIT %(limit)s;

-- name: ack_alert
UPDATE worker_alerts
   SET acknowledged_at = coalesce(acknowledged_at, now())
 WHERE id = %(id)s
RETURNING id, acknowledged_at;

-- name: ack_open
-- "Acknowledge all": every open alert matching the filters (NULL: any) and no newer than
-- `upto` (the newest one the page showed: one raised since is not acknowledged unseen), in
-- one statement through the partial index of open alerts; how many.
WITH acked AS (
    UPDATE worker_alerts
       SET acknowledged_at = now()
     WHERE acknowledged_at IS NULL
       AND (%(type)s::text IS NULL OR type = %(type)s)
       AND (%(job)s::text IS NULL OR job = %(job)s)
       AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
       AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
       AND (%(upto)s::bigint IS NULL OR id <= %(upto)s)
    RETURNING id
)
SELECT count(*) AS acknowledged FROM acked;

-- name: change_streaks
-- The watchdog's streaks (worker_streaks, ARCHITECTURE.md "Watchdog") opened and closed,
-- each change with its alert row, in one statement. An opening takes the (type, subject)
-- key or finds it taken: another process was first, and nothing is raised twice. It is
-- checked again here against the state the scan saw (the job's row unchanged and still
-- unclaimed, the service still without a live process, the run still running), so a scan
-- that went stale meanwhile opens nothing. A closing deletes the streak the scan saw; of
-- several processes closing it one gets the row, and raises the alert. An event without
-- `alert_type` changes the streak alone.
WITH event AS (
    SELECT *
      FROM jsonb_to_recordset(%(events)s::jsonb) AS e(
               action text, type text, subject text, run_id bigint, since timestamptz,
               alert_type text, level text, job text, message text, metadata jsonb)
), opened AS (
    INSERT INTO worker_streaks (type, subject, since, alert_id)
    SELECT e.type, e.subject, e.since, nextval(pg_get_serial_sequence('worker_alerts', 'id'))
      FROM event e
     WHERE e.action = 'open'
       AND CASE e.type
           WHEN 'JOB_OVERDUE' THEN EXISTS (
                SELECT 1 FROM worker_jobs j
                 WHERE j.job = e.subject AND j.next_due_at = e.since AND NOT j.paused
                   AND (j.lease_until IS NULL OR j.lease_until <= now()))
           WHEN 'SERVICE_DOWN' THEN NOT EXISTS (
                SELECT 1 FROM worker_processes p
                 WHERE p.service IN (e.subject, 'all')
                   AND p.last_seen_at > now() - make_interval(secs => %(dead_after_s)s))
           WHEN 'RUN_SLOW' THEN EXISTS (
                SELECT 1 FROM worker_job_runs r WHERE r.id = e.run_id AND r.status = 'running')
           ELSE false END
    ON CONFLICT (type, subject) DO NOTHING
    RETURNING type, subject, alert_id
), closed AS (
    DELETE FROM worker_streaks s
     USING event e
     WHERE e.action = 'close' AND s.type = e.type AND s.subject = e.subject
       AND s.since = e.since
    RETURNING s.type, s.subject
), changed AS (
    SELECT 'open' AS action, type, subject, alert_id AS id FROM opened
    UNION ALL
    SELECT 'close', type, subject, NULL FROM closed
)
INSERT INTO worker_alerts (id, type, level, job, message, metadata)
SELECT coalesce(c.id, nextval(pg_get_serial_sequence('worker_alerts', 'id'))),
       e.alert_type, e.level, e.job, e.message, e.metadata
  FROM changed c
  JOIN event e ON e.action = c.action AND e.type = c.type AND e.subject = c.subject
 WHERE e.alert_type IS NOT NULL
 ORDER BY c.action DESC, e.type, e.subject
RETURNING id, type, level, job, message, metadata, created_at;
