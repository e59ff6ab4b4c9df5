-- The dashboard's, the JSON API's, /metrics' and `worker status`' reads of the ledger and
-- the run history (ARCHITECTURE.md, "The HTTP endpoint"). Every query reads a bounded slice
-- through an index: a page costs the same with a million runs as with ten.

-- name: job_status
-- `worker status` and the dashboard: every job some service has registered (of one service,
-- or one job), with its latest runs, in one round trip, cheap enough for a container
-- HEALTHCHECK every 30 s. Each lateral lookup walks (job, started_at desc). A retired job
-- (no live process runs it any more) is listed only when asked for by name: its page and
-- history stay.
SELECT j.job, j.service, j.schedule, j.next_due_at, j.paused, j.source, j.declared_in,
       j.definition, j.runs, j.successes, j.failures, j.resumed_at, j.retired_at,
       latest.started_at  AS last_started_at,
       latest.status      AS last_status,
       latest.duration_ms AS duration_ms,
       latest.succeeded   AS succeeded,
       latest.failed      AS failed,
       latest.progress_done, latest.progress_total,
       completed.status   AS last_completed_status,
       ran.finished_at    AS last_success_at,
       first.started_at   AS first_started_at,
       now() AS checked_at
  FROM worker_jobs j
  LEFT JOIN LATERAL (
        SELECT started_at, status, duration_ms, succeeded, failed, progress_done, progress_total
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
   AND (j.retired_at IS NULL OR %(job)s::text IS NOT NULL)
   AND (%(service)s::text IS NULL OR %(service)s = 'all' OR j.service = %(service)s)
   AND (%(job)s::text IS NULL OR j.job = %(job)s)
   -- A page: the jobs after (service, job), through worker_jobs_service_job_idx.
   AND (%(after_job)s::text IS NULL OR (j.service, j.job) > (%(after_service)s, %(after_job)s))
 ORDER BY j.service, j.job
 LIMIT %(limit)s;

-- name: job_runs
-- One job's latest runs: walks (job, started_at desc). A running run's progress and elapsed
-- time stand in for its counts and duration.
SELECT id, job, trigger, status, started_at, finished_at, duration_ms, total, succeeded,
       failed, error, scheduled_for, host, pid, progress_done, progress_total,
       CASE WHEN status = 'running'
            THEN (extract(epoch FROM now() - started_at) * 1000)::bigint END AS elapsed_ms
  FROM worker_job_runs
 WHERE job = %(job)s
 ORDER BY started_at DESC, id DESC
 LIMIT %(limit)s;

-- name: recent_runs
-- The latest runs of every job: walks (started_at) backwards.
SELECT id, job, trigger, status, started_at, finished_at, duration_ms, total, succeeded,
       failed, error, scheduled_for, host, pid, progress_done, progress_total,
       CASE WHEN status = 'running'
            THEN (extract(epoch FROM now() - started_at) * 1000)::bigint END AS elapsed_ms
  FROM worker_job_runs
 ORDER BY started_at DESC
 LIMIT %(limit)s;

-- name: run
SELECT id, job, trigger, status, started_at, finished_at, duration_ms, total, succeeded,
       failed, error, scheduled_for, host, pid, details, output, result, attempt, kwargs,
       progress_done, progress_total, cancel_requested_at,
       (extract(epoch FROM now() - started_at) * 1000)::bigint AS elapsed_ms
  FROM worker_job_runs
 WHERE id = %(id)s;

-- name: finished_runs
-- Runs that ended since `since` (minus an overlap for transactions that committed late), for
-- the /metrics counters: walks (finished_at). The caller skips the ids it already counted.
SELECT id, job, status, duration_ms, succeeded, failed, finished_at, now() AS now
  FROM worker_job_runs
 WHERE finished_at > coalesce(%(since)s, now()) - make_interval(secs => %(overlap_s)s)
   AND status <> 'running';

-- name: started_runs
-- Runs that started since `since` (minus the same overlap) serving an occurrence, for the
-- /metrics lateness histogram: walks (started_at). A manual run serves none (no
-- `scheduled_for`); a retry serves its occurrence, as late as the occurrence is. The caller
-- skips the ids it already counted.
SELECT id, job, started_at,
       greatest(extract(epoch FROM started_at - scheduled_for), 0)::float8 AS lateness_s
  FROM worker_job_runs
 WHERE started_at > coalesce(%(since)s, now()) - make_interval(secs => %(overlap_s)s)
   AND scheduled_for IS NOT NULL;

-- name: running_runs
-- The runs in progress, per job, for /metrics: walks the partial index of running runs (a
-- dead run is marked abandoned within a lease and a poll, so it does not count long).
SELECT job, count(*) AS running
  FROM worker_job_runs
 WHERE status = 'running'
 GROUP BY job;

-- name: live_processes
-- The live processes of every service that ever had one (worker_services) or has one now,
-- for /metrics: 0 for a service whose processes are gone. Live: seen within `dead_after_s`,
-- as processes.list_processes says. Both tables hold a row per service or per process.
SELECT s.service,
       (SELECT count(*)
          FROM worker_processes p
         WHERE p.service = s.service
           AND p.last_seen_at > now() - make_interval(secs => %(dead_after_s)s)) AS live
  FROM (SELECT service FROM worker_services
        UNION
        SELECT service FROM worker_processes) s
 ORDER BY s.service;
