-- The charts of the job page and the dashboard (ARCHITECTURE.md, "The HTTP endpoint"): each
-- a bounded walk of a job's entries in (job, started_at DESC, ...), so a chart costs the
-- same with a million runs as with a hundred.
--
-- Why the job is compared the way it is: with every job's runs interleaved in time, the
-- planner would rather walk (started_at) backwards and filter by job, since it expects the
-- job's next run a few entries on. For a job that stopped running weeks ago that walk
-- crosses every other job's runs since (measured: 50 to 200 ms on a million runs instead of
-- 0.3 ms). So `job` is compared as a range (`job >= x AND job <= x`, not folded into a
-- constant) and kept in the ORDER BY, or as a row with `started_at`: forms only the job's
-- own indexes answer, on PostgreSQL 15 as on 18 (tests/test_charts.py checks the plans).

-- name: last_runs
-- A job's last runs, newest first: `limit` entries of (job, started_at DESC, id DESC). A
-- running run's time so far stands in for its duration.
SELECT id, status, started_at, duration_ms,
       CASE WHEN status = 'running'
            THEN (extract(epoch FROM now() - started_at) * 1000)::bigint END AS elapsed_ms
  FROM worker_job_runs
 WHERE job >= %(job)s AND job <= %(job)s
 ORDER BY job, started_at DESC, id DESC
 LIMIT %(limit)s;

-- name: runs_per_hour
-- A job's runs per hour and status over the last `hours` hours, hours as the clock of
-- `zone` cuts them (a +05:30 zone's hours begin at half past UTC's): the range of
-- (job, started_at DESC) from `since` on, and nothing else. `since`, the first hour's
-- start, comes back on every row, and alone (hour and status null) when there was no run.
SELECT w.since, h.hour, h.status, h.runs
  FROM (SELECT date_trunc('hour', now(), %(zone)s)
               - make_interval(hours => %(hours)s::int - 1) AS since) w
  LEFT JOIN LATERAL (
        SELECT date_trunc('hour', r.started_at, %(zone)s) AS hour, r.status,
               count(*)::int AS runs
          FROM worker_job_runs r
         WHERE r.job = %(job)s AND (r.job, r.started_at) >= (%(job)s, w.since)
         GROUP BY 1, 2) h ON true;

-- name: recent_outcomes
-- The last `per_job` runs of each of a page's jobs, in one statement: `per_job` entries of
-- (job, started_at DESC, id DESC) per job.
SELECT j.job, r.id, r.status, r.started_at, r.duration_ms
  FROM unnest(%(jobs)s::text[]) AS j(job)
 CROSS JOIN LATERAL (
        SELECT id, status, started_at, duration_ms
          FROM worker_job_runs r
         WHERE r.job >= j.job AND r.job <= j.job
         ORDER BY r.job, r.started_at DESC, r.id DESC
         LIMIT %(per_job)s) r
 ORDER BY j.job, r.started_at DESC, r.id DESC;
