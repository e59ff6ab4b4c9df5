-- `worker status`: everything about the selected jobs in one round trip, cheap enough for a
-- container HEALTHCHECK every 30 s. Each lateral lookup walks (job, started_at desc).

-- name: job_status
WITH selected AS (
    SELECT name AS job, position
      FROM unnest(%(jobs)s::text[]) WITH ORDINALITY AS s(name, position)
)
SELECT s.job,
       latest.started_at  AS last_started_at,
       latest.status      AS last_status,
       latest.duration_ms AS duration_ms,
       latest.succeeded   AS succeeded,
       latest.failed      AS failed,
       finished.finished_at AS last_finished_at,
       completed.status   AS last_completed_status,
       ran.finished_at    AS last_success_at,
       coalesce(flags.paused, false) AS paused,
       now() AS checked_at
  FROM selected s
  LEFT JOIN LATERAL (
        SELECT started_at, status, duration_ms, succeeded, failed
          FROM worker_job_runs r WHERE r.job = s.job
         ORDER BY started_at DESC, id DESC LIMIT 1) latest ON true
  -- Interval jobs are due one period after the last run ended, whatever its status.
  LEFT JOIN LATERAL (
        SELECT finished_at
          FROM worker_job_runs r WHERE r.job = s.job AND r.finished_at IS NOT NULL
         ORDER BY started_at DESC, id DESC LIMIT 1) finished ON true
  -- Interrupted and abandoned runs say nothing about whether the job works: skip them.
  LEFT JOIN LATERAL (
        SELECT status
          FROM worker_job_runs r
         WHERE r.job = s.job AND r.status IN ('success', 'partial', 'failed')
         ORDER BY started_at DESC, id DESC LIMIT 1) completed ON true
  -- A partial run did run (some items failed): it counts against staleness.
  LEFT JOIN LATERAL (
        SELECT finished_at
          FROM worker_job_runs r
         WHERE r.job = s.job AND r.status IN ('success', 'partial')
         ORDER BY started_at DESC, id DESC LIMIT 1) ran ON true
  LEFT JOIN worker_jobs flags ON flags.job = s.job
 ORDER BY s.position;

-- name: database_now
SELECT now() AS checked_at;
