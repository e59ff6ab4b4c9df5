-- `worker status`: every job some service has registered in the ledger, with its latest
-- runs, in one round trip, cheap enough for a container HEALTHCHECK every 30 s. Each
-- lateral lookup walks (job, started_at desc).

-- name: job_status
SELECT j.job, j.service, j.schedule, j.next_due_at, j.paused,
       latest.started_at  AS last_started_at,
       latest.status      AS last_status,
       latest.duration_ms AS duration_ms,
       latest.succeeded   AS succeeded,
       latest.failed      AS failed,
       completed.status   AS last_completed_status,
       ran.finished_at    AS last_success_at,
       first.started_at   AS first_started_at,
       now() AS checked_at
  FROM worker_jobs j
  LEFT JOIN LATERAL (
        SELECT started_at, status, duration_ms, succeeded, failed
          FROM worker_job_runs r WHERE r.job = j.job
         ORDER BY started_at DESC, id DESC LIMIT 1) latest ON true
  -- Interrupted and abandoned runs say nothing about whether the job works: skip them.
  LEFT JOIN LATERAL (
        SELECT status
          FROM worker_job_runs r
         WHERE r.job = j.job AND r.status IN ('success', 'partial', 'failed')
         ORDER BY started_at DESC, id DESC LIMIT 1) completed ON true
  -- A partial run did run (some items failed): it counts against staleness.
  LEFT JOIN LATERAL (
        SELECT finished_at
          FROM worker_job_runs r
         WHERE r.job = j.job AND r.status IN ('success', 'partial')
         ORDER BY started_at DESC, id DESC LIMIT 1) ran ON true
  -- How long the job has been trying: a first run still going is not yet stale.
  LEFT JOIN LATERAL (
        SELECT started_at
          FROM worker_job_runs r WHERE r.job = j.job
         ORDER BY started_at, id LIMIT 1) first ON true
 WHERE j.schedule IS NOT NULL
   AND (%(service)s::text IS NULL OR %(service)s = 'all' OR j.service = %(service)s)
   AND (%(job)s::text IS NULL OR j.job = %(job)s)
 ORDER BY j.service, j.job;


-- name: processes
-- Every worker process that registered (ARCHITECTURE.md, "Processes"): alive while seen
-- within `dead_after_s` (3 polls), else dead (killed, frozen, or cut off).
SELECT id, host, pid, service, version, concurrency, started_at, last_seen_at, running,
       last_seen_at > now() - make_interval(secs => %(dead_after_s)s) AS alive
  FROM worker_processes
 ORDER BY service, started_at, id;
