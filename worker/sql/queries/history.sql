-- The run and alert history, searched and paged (ARCHITECTURE.md, "The HTTP endpoint":
-- `/runs`, `/alerts`). Every filter is optional (NULL: any) and they combine with AND; a
-- page is newest first and ends at most `limit` rows on (started_at, id) or (created_at,
-- id), and the next starts after the row named by `before`, never at an OFFSET. Nothing is
-- prepared, so each statement is planned with its values: an unused filter folds away and
-- the walk takes the index of the filters given (migrations 0001, 0003, 0008).

-- name: runs
SELECT r.id, r.job, r.status, r.trigger, r.scheduled_for, r.started_at, r.finished_at,
       r.duration_ms, r.total, r.succeeded, r.failed, r.error, r.attempt, r.host, r.pid
  FROM worker_job_runs r
 WHERE (%(job)s::text IS NULL OR r.job = %(job)s)
   AND (%(status)s::text IS NULL OR r.status = %(status)s)
   AND (%(trigger)s::text IS NULL OR r.trigger = %(trigger)s)
   AND (%(since)s::timestamptz IS NULL OR r.started_at >= %(since)s)
   AND (%(until)s::timestamptz IS NULL OR r.started_at < %(until)s)
   -- After the run `before` (none, if it was pruned since): its start bounds the walk.
   AND (%(before)s::bigint IS NULL
        OR (r.started_at <= (SELECT b.started_at FROM worker_job_runs b WHERE b.id = %(before)s)
            AND (r.started_at < (SELECT b.started_at FROM worker_job_runs b WHERE b.id = %(before)s)
                 OR r.id < %(before)s)))
 ORDER BY r.started_at DESC, r.id DESC
 LIMIT %(limit)s;

-- name: alerts
-- `run_id`: the run an alert is about, as the alert path and the watchdog record it in
-- `metadata`.
SELECT a.id, a.type, a.level, a.job, a.message, a.metadata,
       CASE WHEN jsonb_typeof(a.metadata->'run_id') = 'number'
            THEN (a.metadata->>'run_id')::bigint END AS run_id,
       a.created_at, a.acknowledged_at
  FROM worker_alerts a
 WHERE (%(type)s::text IS NULL OR a.type = %(type)s)
   AND (%(job)s::text IS NULL OR a.job = %(job)s)
   AND (NOT %(only_open)s OR a.acknowledged_at IS NULL)
   AND (%(since)s::timestamptz IS NULL OR a.created_at >= %(since)s)
   AND (%(until)s::timestamptz IS NULL OR a.created_at < %(until)s)
   AND (%(before)s::bigint IS NULL
        OR (a.created_at <= (SELECT b.created_at FROM worker_alerts b WHERE b.id = %(before)s)
            AND (a.created_at < (SELECT b.created_at FROM worker_alerts b WHERE b.id = %(before)s)
                 OR a.id < %(before)s)))
 ORDER BY a.created_at DESC, a.id DESC
 LIMIT %(limit)s;
