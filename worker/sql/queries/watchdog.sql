-- The watchdog's read (ARCHITECTURE.md, "Watchdog"): once a poll, every live process asks
-- what may open or close one of its streaks. Read only: the streaks and their alerts change
-- through alerts.change_streaks, which checks each opening again in its own statement.

-- name: scan
-- One statement, index probes only: an idle check reads no job row, however many jobs
-- there are. Each row: `action` (open or close), the streak's `type` and `subject`, `job`,
-- `run_id`, `since` (the occurrence missed, the last live moment, the run's start) and
-- `facts` (what the alert's message says).
-- - JOB_OVERDUE opens for a job that is not paused nor retired, past its due time plus its grace
--   (`grace_s` when set, else max(`grace_floor_s`, `grace_fraction` x its period)) and not
--   leased; it closes once the job's `next_due_at` moved on (a live process took the
--   occurrence: claimed it, or consumed it without a run).
-- - SERVICE_DOWN opens for a service with jobs not paused, served by no live process (its
--   own or an `all` one) for `down_s` since one was last live; it closes when one is live.
-- - RUN_SLOW is looked at for each run in progress with enough successful runs of its job
--   to judge (the rule itself is worker.watchdog.slow_threshold_ms); it closes, silently,
--   when the run ended.
WITH RECURSIVE services(service) AS (
    -- the services the ledger's jobs name: a skip scan of worker_jobs_service_due_idx
    SELECT min(service) FROM worker_jobs
    UNION ALL
    SELECT (SELECT min(j.service) FROM worker_jobs j WHERE j.service > s.service)
      FROM services s
     WHERE s.service IS NOT NULL
), live AS (
    SELECT service, host, pid
      FROM worker_processes
     WHERE last_seen_at > now() - make_interval(secs => %(dead_after_s)s)
), served AS (
    SELECT s.service,
           greatest((SELECT max(p.last_seen_at) FROM worker_processes p
                      WHERE p.service IN (s.service, 'all')),
                    (SELECT max(v.last_live_at) FROM worker_services v
                      WHERE v.service IN (s.service, 'all'))) AS last_live_at,
           EXISTS (SELECT 1 FROM live l WHERE l.service IN (s.service, 'all')) AS live
      FROM services s
     WHERE s.service IS NOT NULL
)
(SELECT 'open' AS action, 'JOB_OVERDUE' AS type, j.job AS subject, j.job,
        NULL::bigint AS run_id, j.next_due_at AS since,
        jsonb_build_object('service', j.service, 'schedule', j.schedule,
                           'period_s', j.period_s, 'next_due_at', j.next_due_at,
                           'late_s', extract(epoch FROM now() - j.next_due_at)) AS facts
   FROM worker_jobs j
  WHERE NOT j.paused AND j.retired_at IS NULL
    AND j.next_due_at < now() - make_interval(secs => %(least_grace_s)s)
    AND j.next_due_at + make_interval(secs => coalesce(
            %(grace_s)s::float8,
            greatest(%(grace_floor_s)s, %(grace_fraction)s * coalesce(j.period_s, 0)))) < now()
    AND (j.lease_until IS NULL OR j.lease_until <= now())
    AND NOT EXISTS (SELECT 1 FROM worker_streaks s
                     WHERE s.type = 'JOB_OVERDUE' AND s.subject = j.job)
  ORDER BY j.next_due_at
  LIMIT %(limit)s)
UNION ALL
SELECT 'close', s.type, s.subject, s.subject, r.id, s.since,
       jsonb_build_object('alert_id', s.alert_id, 'next_due_at', j.next_due_at,
                          'run_status', r.status, 'overdue_s',
                          extract(epoch FROM now() - s.since))
  FROM worker_streaks s
  LEFT JOIN worker_jobs j ON j.job = s.subject
  LEFT JOIN LATERAL (
        SELECT x.id, x.status FROM worker_job_runs x
         WHERE x.job = s.subject AND x.started_at >= s.since
         ORDER BY x.started_at DESC, x.id DESC LIMIT 1) r ON true
 WHERE s.type = 'JOB_OVERDUE' AND j.next_due_at IS DISTINCT FROM s.since
UNION ALL
SELECT 'open', 'SERVICE_DOWN', d.service, NULL, NULL, d.last_live_at,
       jsonb_build_object(
           'service', d.service, 'last_live_at', d.last_live_at,
           'down_s', extract(epoch FROM now() - d.last_live_at),
           'jobs', (SELECT coalesce(jsonb_agg(listed.job ORDER BY listed.job), '[]'::jsonb)
                      FROM (SELECT job FROM worker_jobs
                             WHERE service = d.service AND NOT paused AND retired_at IS NULL
                             ORDER BY job LIMIT %(jobs_listed)s) listed),
           'job_count', (SELECT count(*) FROM worker_jobs
                          WHERE service = d.service AND NOT paused AND retired_at IS NULL))
  FROM served d
 WHERE NOT d.live
   AND d.last_live_at < now() - make_interval(secs => %(down_s)s)
   AND EXISTS (SELECT 1 FROM worker_jobs j
                WHERE j.service = d.service AND NOT j.paused AND j.retired_at IS NULL)
   AND NOT EXISTS (SELECT 1 FROM worker_streaks s
                    WHERE s.type = 'SERVICE_DOWN' AND s.subject = d.service)
UNION ALL
SELECT 'close', s.type, s.subject, NULL, NULL, s.since,
       jsonb_build_object('alert_id', s.alert_id, 'down_s', extract(epoch FROM now() - s.since),
                          'processes', (SELECT jsonb_agg(l.service || ' ' || l.host || ':' || l.pid
                                                         ORDER BY l.host, l.pid)
                                          FROM live l WHERE l.service IN (s.subject, 'all')))
  FROM worker_streaks s
 WHERE s.type = 'SERVICE_DOWN'
   AND EXISTS (SELECT 1 FROM live l WHERE l.service IN (s.subject, 'all'))
UNION ALL
SELECT 'open', 'RUN_SLOW', r.id::text, r.job, r.id, r.started_at,
       jsonb_build_object('elapsed_ms', (extract(epoch FROM now() - r.started_at) * 1000)::bigint,
                          'durations_ms', to_jsonb(h.durations))
  FROM worker_job_runs r
  CROSS JOIN LATERAL (
        SELECT array_agg(last.duration_ms) AS durations, count(*) AS n
          FROM (SELECT x.duration_ms FROM worker_job_runs x
                 WHERE x.job = r.job AND x.status = 'success' AND x.duration_ms IS NOT NULL
                 ORDER BY x.started_at DESC, x.id DESC LIMIT %(slow_sample)s) last) h
 WHERE r.status = 'running'
   AND h.n >= %(slow_min_runs)s
   AND NOT EXISTS (SELECT 1 FROM worker_streaks s
                    WHERE s.type = 'RUN_SLOW' AND s.subject = r.id::text)
UNION ALL
SELECT 'close', s.type, s.subject, NULL, NULL, s.since, '{}'::jsonb
  FROM worker_streaks s
 WHERE s.type = 'RUN_SLOW'
   AND NOT EXISTS (SELECT 1 FROM worker_job_runs r
                    WHERE r.id = CASE WHEN s.type = 'RUN_SLOW' THEN s.subject::bigint END
                      AND r.status = 'running');
