-- The HTTP endpoint and dashboard (ARCHITECTURE.md, "The HTTP endpoint"). Every query reads
-- a bounded slice through an index: a page costs the same with a million runs as with ten.

-- name: job_runs
-- One job's latest runs: walks (job, started_at desc).
SELECT id, job, trigger, status, started_at, finished_at, duration_ms, total, succeeded,
       failed, error, scheduled_for, host, pid
  FROM worker_job_runs
 WHERE job = %(job)s
 ORDER BY started_at DESC, id DESC
 LIMIT %(limit)s;

-- name: recent_runs
-- The latest runs of every job: walks (started_at) backwards.
SELECT id, job, trigger, status, started_at, finished_at, duration_ms, total, succeeded,
       failed, error, scheduled_for, host, pid
  FROM worker_job_runs
 ORDER BY started_at DESC
 LIMIT %(limit)s;

-- name: run
SELECT id, job, trigger, status, started_at, finished_at, duration_ms, total, succeeded,
       failed, error, scheduled_for, host, pid, details, output, result
  FROM worker_job_runs
 WHERE id = %(id)s;

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

-- name: finished_runs
-- Runs that ended since `since` (minus an overlap for transactions that committed late), for
-- the /metrics counters: walks (finished_at). The caller skips the ids it already counted.
SELECT id, job, status, duration_ms, succeeded, failed, finished_at, now() AS now
  FROM worker_job_runs
 WHERE finished_at > coalesce(%(since)s, now()) - make_interval(secs => %(overlap_s)s)
   AND status <> 'running';
