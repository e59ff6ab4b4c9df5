-- Run history, per-job flags and alerts: the worker's own bookkeeping.

-- name: abandon_running_runs
UPDATE worker_job_runs
   SET status = 'abandoned', finished_at = now(),
       duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,
       error = 'the process running it stopped before finishing'
 WHERE job = %(job)s AND status = 'running'
RETURNING id, host, pid;

-- name: insert_run
INSERT INTO worker_job_runs (job, trigger, status, host, pid)
VALUES (%(job)s, %(trigger)s, 'running', %(host)s, %(pid)s)
RETURNING id, started_at;

-- name: finish_run
UPDATE worker_job_runs
   SET status = %(status)s, finished_at = now(),
       duration_ms = %(duration_ms)s, total = %(total)s, succeeded = %(succeeded)s,
       failed = %(failed)s, error = %(error)s, details = %(details)s
 WHERE id = %(id)s;

-- name: is_paused
SELECT coalesce((SELECT paused FROM worker_jobs WHERE job = %(job)s), false) AS paused;

-- name: set_paused
INSERT INTO worker_jobs (job, paused, paused_at, updated_at)
VALUES (%(job)s, %(paused)s, CASE WHEN %(paused)s THEN now() END, now())
ON CONFLICT (job) DO UPDATE
   SET paused = excluded.paused,
       paused_at = CASE WHEN excluded.paused THEN coalesce(worker_jobs.paused_at, now()) END,
       updated_at = now();

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
