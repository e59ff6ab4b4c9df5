-- The schedule ledger: one row per job in worker_jobs (ARCHITECTURE.md, "The schedule
-- ledger"). Every statement here is a single statement or a short transaction: nothing is
-- session-scoped, so all of it works through a transaction-pooling PgBouncer.

-- name: register_job
-- A changed schedule text recomputes next_due_at; an unchanged one keeps the row's phase.
-- A file or built-in job registered under a runtime job's name takes the name over: the
-- file is what a deploy ships. `period_s` is the schedule's period, from which the
-- watchdog's overdue grace is taken. A retired job declared again comes back.
INSERT INTO worker_jobs (job, service, schedule, next_due_at, max_attempts, source,
                         declared_in, period_s, updated_at)
VALUES (%(job)s, %(service)s, %(schedule)s, %(first_due)s, %(max_attempts)s, %(source)s,
        %(declared_in)s, %(period_s)s, now())
ON CONFLICT (job) DO UPDATE
   SET service = excluded.service,
       schedule = excluded.schedule,
       max_attempts = excluded.max_attempts,
       source = excluded.source,
       declared_in = excluded.declared_in,
       definition = NULL,
       period_s = excluded.period_s,
       retired_at = NULL,
       next_due_at = CASE
           WHEN worker_jobs.schedule IS DISTINCT FROM excluded.schedule
             OR worker_jobs.next_due_at IS NULL THEN excluded.next_due_at
           ELSE worker_jobs.next_due_at END,
       updated_at = CASE
           WHEN worker_jobs.schedule IS DISTINCT FROM excluded.schedule THEN now()
           ELSE worker_jobs.updated_at END
RETURNING job, schedule, next_due_at, (xmax = 0) AS inserted;

-- name: peek_job
-- The job's row as a claim judges it, with the owed run's occurrence and attempt.
SELECT j.job, j.schedule, j.next_due_at, j.paused, j.run_requested_at, j.run_requested_by,
       j.run_requested_kwargs, j.source, j.definition, j.service, j.lease_owner, j.lease_until, coalesce(j.lease_until > now(), false) AS leased,
       j.owed_run_id, o.scheduled_for AS owed_for, o.attempt AS owed_attempt,
       now() AS now
  FROM worker_jobs j LEFT JOIN worker_job_runs o ON o.id = j.owed_run_id
 WHERE j.job = %(job)s;

-- name: due_jobs
-- The loop's one statement per wake-up, whatever the number of jobs: the jobs of its
-- services that are due, requested or owed and whose lease is released (requests first,
-- then the oldest occurrence), and the next future due time among them, its next
-- wake-up. Index probes only (worker_jobs_service_due_idx, _requested_idx, _owed_idx), so
-- an idle loop reads as little with 10,000 jobs as with 10.
-- With `beat` (once a poll) the same statement is the process's heartbeat, and reaps
-- dead runs of any service: a `running` row whose job holds no live lease for it is
-- marked abandoned, its lease released, and its occurrence owed while attempts remain.
-- The rows it returns are those before the reap: a reaped job is claimed at the next read.
WITH beat AS (
    UPDATE worker_processes
       SET last_seen_at = now(), running = %(running)s
     WHERE id = %(process_id)s AND %(beat)s
    RETURNING id
), dead AS (
    SELECT r.id
      FROM worker_job_runs r
      LEFT JOIN worker_jobs j
        ON j.job = r.job AND j.current_run_id = r.id AND j.lease_until > now()
     WHERE %(beat)s AND r.status = 'running' AND j.job IS NULL
       FOR UPDATE OF r SKIP LOCKED
), abandoned AS (
    UPDATE worker_job_runs r
       SET status = 'abandoned', finished_at = now(),
           duration_ms = (extract(epoch FROM now() - r.started_at) * 1000)::bigint,
           error = 'its lease expired: the process running it stopped renewing it '
                   '(killed, frozen, or cut off from the database)'
      FROM dead
     WHERE r.id = dead.id
    RETURNING r.id, r.job, r.attempt, r.trigger, r.scheduled_for, r.host, r.pid
), released AS (
    UPDATE worker_jobs j
       SET lease_owner = NULL, lease_until = NULL, current_run_id = NULL, updated_at = now(),
           owed_run_id = CASE WHEN a.trigger <> 'manual' AND a.attempt < j.max_attempts
                              THEN a.id ELSE j.owed_run_id END
      FROM abandoned a
     WHERE j.job = a.job AND j.current_run_id = a.id
    RETURNING j.job, j.owed_run_id, j.max_attempts
), reaped AS (
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'id', a.id, 'job', a.job, 'attempt', a.attempt, 'trigger', a.trigger,
               'scheduled_for', a.scheduled_for,
               'host', a.host, 'pid', a.pid, 'owed', coalesce(r.owed_run_id = a.id, false),
               'max_attempts', r.max_attempts)), '[]'::jsonb) AS runs
      FROM abandoned a LEFT JOIN released r ON r.job = a.job
)
SELECT t.now, t.next_wake, (SELECT runs FROM reaped) AS reaped,
       j.job, j.schedule, j.next_due_at, j.paused, j.run_requested_at, j.run_requested_by,
       j.run_requested_kwargs, j.source, j.definition, false AS leased, j.owed_run_id, o.scheduled_for AS owed_for, o.attempt AS owed_attempt
  FROM (SELECT now() AS now,
               (SELECT min(first.next_due_at)
                  FROM unnest(%(services)s::text[]) AS s(service),
                       LATERAL (SELECT next_due_at FROM worker_jobs
                                 WHERE service = s.service AND next_due_at > now()
                                 ORDER BY next_due_at LIMIT 1) AS first) AS next_wake) t
  LEFT JOIN worker_jobs j
    ON j.service = ANY(%(services)s)
   AND (j.next_due_at <= t.now OR j.run_requested_at IS NOT NULL OR j.owed_run_id IS NOT NULL)
   AND j.lease_until IS NULL
   AND j.retired_at IS NULL
  LEFT JOIN worker_job_runs o ON o.id = j.owed_run_id
 ORDER BY j.run_requested_at NULLS LAST, j.next_due_at
 LIMIT %(limit)s;

-- name: claim_job
-- The claim and the run's start, one statement. Granted only while no unexpired lease
-- exists and the row is as the claimer saw it (next_due_at, paused): a concurrent claim
-- changes next_due_at, so exactly one of two racing claimers gets a row back. With `lease`
-- the run's row is inserted under the id the lease records, and any other `running` row of
-- the job, a dead runner's, is marked abandoned (every part sees the same snapshot, so the
-- new row is never among them). `lease` false consumes the occurrence without a run (a
-- paused job). `keep_due`: a request's run that leaves the due (and owed) occurrence for
-- the next claim (`next_due_at` is then the one seen).
WITH claimed AS (
    UPDATE worker_jobs
       SET next_due_at = %(next_due_at)s,
           run_requested_at = NULL,
           run_requested_by = NULL,
           run_requested_kwargs = NULL,
           owed_run_id = CASE WHEN %(keep_due)s THEN owed_run_id END,
           lease_owner = CASE WHEN %(lease)s THEN %(owner)s END,
           lease_until = CASE WHEN %(lease)s THEN now() + make_interval(secs => %(lease_s)s) END,
           current_run_id = CASE WHEN %(lease)s
                                 THEN nextval(pg_get_serial_sequence('worker_job_runs', 'id')) END,
           updated_at = now()
     WHERE job = %(job)s
       AND next_due_at = %(seen_due)s
       AND paused = %(seen_paused)s
       AND owed_run_id IS NOT DISTINCT FROM %(seen_owed)s
       AND (lease_until IS NULL OR lease_until <= now())
       AND (next_due_at <= now() OR run_requested_at IS NOT NULL OR owed_run_id IS NOT NULL
            OR %(forced)s)
    RETURNING job, current_run_id
), abandoned AS (
    UPDATE worker_job_runs
       SET status = 'abandoned', finished_at = now(),
           duration_ms = (extract(epoch FROM now() - started_at) * 1000)::bigint,
           error = 'the process running it stopped before finishing'
     WHERE job = %(job)s AND status = 'running'
       AND EXISTS (SELECT 1 FROM claimed WHERE current_run_id IS NOT NULL)
    RETURNING id, host, pid
), run AS (
    INSERT INTO worker_job_runs (id, job, trigger, status, host, pid, scheduled_for, attempt,
                                 kwargs)
    SELECT current_run_id, job, %(trigger)s, 'running', %(host)s, %(pid)s, %(scheduled_for)s,
           %(attempt)s, %(kwargs)s
      FROM claimed
     WHERE current_run_id IS NOT NULL
    RETURNING id, started_at
)
SELECT claimed.job, run.id AS run_id, run.started_at,
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', id, 'host', host, 'pid', pid))
                   FROM abandoned), '[]'::jsonb) AS abandoned
  FROM claimed LEFT JOIN run ON run.id = claimed.current_run_id;

-- name: skip_missed
-- RUN_ON_START=false skips only occurrences missed while nothing ran: not one a live
-- runner holds the lease of, nor one so recent that a live replica may be about to claim
-- it (its wake-up or poll comes within `grace_s`).
UPDATE worker_jobs
   SET next_due_at = %(next_due_at)s, updated_at = now()
 WHERE job = %(job)s AND next_due_at = %(seen_due)s
   AND next_due_at < now() - make_interval(secs => %(grace_s)s)
   AND (lease_until IS NULL OR lease_until <= now());

-- name: request_startup_runs
-- RUN_ON_START=true. Replicas starting together make one run per job: no request while
-- one is waiting, a run holds the lease, or a start-up run of the job began moments ago
-- in another process that is still alive. A restart (the previous process gone) always
-- runs.
UPDATE worker_jobs j
   SET run_requested_at = now(), run_requested_by = 'startup', updated_at = now()
 WHERE j.job = ANY(%(jobs)s)
   AND NOT j.paused
   AND j.run_requested_at IS NULL
   AND (j.lease_until IS NULL OR j.lease_until <= now())
   AND NOT EXISTS (
        SELECT 1 FROM worker_job_runs r
          JOIN worker_processes p ON p.host = r.host AND p.pid = r.pid
         WHERE r.job = j.job AND r.trigger = 'startup'
           AND r.started_at > now() - make_interval(secs => %(window_s)s)
           AND p.id <> %(process_id)s
           AND p.last_seen_at > now() - make_interval(secs => %(alive_s)s))
RETURNING j.job;

-- name: request_run
-- "Run now" from the CLI or the dashboard: runs even a paused job. A request with
-- parameters (`kwargs`) is taken only while no other request waits: it would be merged
-- into that one's run, with the other's parameters.
UPDATE worker_jobs
   SET run_requested_at = coalesce(run_requested_at, now()), run_requested_by = 'manual',
       run_requested_kwargs = coalesce(%(kwargs)s, run_requested_kwargs),
       updated_at = now()
 WHERE job = %(job)s
   AND (%(kwargs)s::jsonb IS NULL OR run_requested_at IS NULL)
RETURNING job, run_requested_at;

-- name: renew_lease
UPDATE worker_jobs
   SET lease_until = now() + make_interval(secs => %(lease_s)s)
 WHERE job = %(job)s AND current_run_id = %(run_id)s AND lease_owner = %(owner)s
   AND lease_until > now()
RETURNING lease_until;

-- name: finish_run
-- One statement: the run's outcome written (unless the next claimer already marked it
-- abandoned) and the lease released (only if this run still holds it).
WITH finished AS (
    UPDATE worker_job_runs
       SET status = %(status)s, finished_at = now(),
           duration_ms = %(duration_ms)s, total = %(total)s, succeeded = %(succeeded)s,
           failed = %(failed)s, error = %(error)s, details = %(details)s,
           output = %(output)s, result = %(result)s
     WHERE id = %(id)s AND status = 'running'
    RETURNING id
), released AS (
    -- An interrupted run leaves its occurrence owed while attempts remain; with
    -- overlap = skip an occurrence that fell due during the run moves on to `skip_to`.
    -- The job's counters count every run its runner recorded (history is pruned, they
    -- are not): successes are `success`, failures `failed` and `partial`.
    UPDATE worker_jobs
       SET lease_owner = NULL, lease_until = NULL, current_run_id = NULL, updated_at = now(),
           runs = runs + (SELECT count(*) FROM finished),
           successes = successes + (SELECT count(*) FROM finished
                                     WHERE %(status)s = 'success'),
           failures = failures + (SELECT count(*) FROM finished
                                   WHERE %(status)s IN ('failed', 'partial')),
           owed_run_id = CASE WHEN %(owed)s AND EXISTS (SELECT 1 FROM finished)
                              THEN %(id)s ELSE owed_run_id END,
           next_due_at = CASE WHEN %(skip_to)s::timestamptz IS NOT NULL
                               AND next_due_at = %(seen_due)s AND next_due_at <= now()
                              THEN %(skip_to)s ELSE next_due_at END
     WHERE job = %(job)s AND lease_owner = %(owner)s AND current_run_id = %(id)s
    RETURNING job, next_due_at
)
SELECT (SELECT count(*) FROM finished) AS finished, (SELECT count(*) FROM released) AS released,
       (SELECT next_due_at FROM released) AS next_due_at,
       -- the run-level alert rules firing for the job, for the rules that judge this run
       -- (alerts.latest_rule_alerts, read here so that a run costs one statement less)
       (SELECT coalesce(jsonb_agg(jsonb_build_object('rule', rule, 'type', type)), '[]')
          FROM (SELECT DISTINCT ON (metadata->>'rule') metadata->>'rule' AS rule, type
                  FROM worker_alerts
                 WHERE job = %(job)s AND type = ANY(%(alert_types)s)
                   AND metadata->>'rule' = ANY(%(alert_rules)s)
                 ORDER BY metadata->>'rule', id DESC) latest) AS latest_rule_alerts;

-- name: set_paused
-- A pause or a resume (a row for a built-in job no service registered yet); `changed`
-- false when the job already was so, `paused_at` when it was paused. A resume starts the
-- job's staleness clock again (`resumed_at`): the occurrences skipped while paused do not
-- count against it.
WITH before AS (
    SELECT paused, paused_at FROM worker_jobs WHERE job = %(job)s
), written AS (
    INSERT INTO worker_jobs (job, paused, paused_at, updated_at)
    VALUES (%(job)s, %(paused)s, CASE WHEN %(paused)s THEN now() END, now())
    ON CONFLICT (job) DO UPDATE
       SET paused = excluded.paused,
           paused_at = CASE WHEN excluded.paused THEN coalesce(worker_jobs.paused_at, now()) END,
           resumed_at = CASE WHEN worker_jobs.paused AND NOT excluded.paused THEN now()
                             ELSE worker_jobs.resumed_at END,
           updated_at = now()
    RETURNING job
)
SELECT (SELECT job FROM written) AS job,
       coalesce((SELECT paused FROM before), false) IS DISTINCT FROM %(paused)s AS changed,
       (SELECT paused_at FROM before) AS paused_at;

-- name: retire_undeclared
-- The declared and built-in jobs that no live process runs any more, while
-- some live process serves their service (its own or an `all` one) and every such process
-- said what it runs (`worker_processes.jobs`; NULL, an older version's, runs everything),
-- and no run of them goes on: retired (ARCHITECTURE.md, "Retired jobs"). A service with
-- no live process retires nothing: its jobs are overdue, not gone. A retired job's open
-- overdue streak ends with it (no recovery will ever close it).
WITH live AS (
    SELECT service, jobs FROM worker_processes
     WHERE last_seen_at > now() - make_interval(secs => %(dead_after_s)s)
), retired AS (
    UPDATE worker_jobs j
       SET retired_at = now(), updated_at = now()
     WHERE j.retired_at IS NULL AND j.source <> 'runtime'
       AND (j.lease_until IS NULL OR j.lease_until <= now())
       AND EXISTS (SELECT 1 FROM live l WHERE l.service IN (j.service, 'all'))
       AND NOT EXISTS (SELECT 1 FROM live l
                        WHERE l.service IN (j.service, 'all')
                          AND (l.jobs IS NULL OR j.job = ANY(l.jobs)))
    RETURNING j.job, j.service
), ended AS (
    DELETE FROM worker_streaks s USING retired r
     WHERE s.type = 'JOB_OVERDUE' AND s.subject = r.job
)
SELECT job, service FROM retired;

-- name: forget_job
-- `worker forget`: the job's ledger row goes, unless a run of it goes on; with `history`
-- its runs, alerts, open streaks and recorded changes go too (else they stay, as history
-- no job row names). The counts of what went, and of the history kept.
WITH gone AS (
    DELETE FROM worker_jobs
     WHERE job = %(job)s AND (lease_until IS NULL OR lease_until <= now())
    RETURNING job
), runs AS (
    DELETE FROM worker_job_runs
     WHERE job = %(job)s AND %(history)s AND EXISTS (SELECT 1 FROM gone)
    RETURNING id
), alerts AS (
    DELETE FROM worker_alerts
     WHERE job = %(job)s AND %(history)s AND EXISTS (SELECT 1 FROM gone)
    RETURNING id
), streaks AS (
    DELETE FROM worker_streaks
     WHERE type = 'JOB_OVERDUE' AND subject = %(job)s AND EXISTS (SELECT 1 FROM gone)
    RETURNING subject
), changes AS (
    DELETE FROM worker_job_changes
     WHERE job = %(job)s AND %(history)s AND EXISTS (SELECT 1 FROM gone)
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM gone) AS forgotten,
       (SELECT count(*) FROM runs) AS runs_deleted,
       (SELECT count(*) FROM alerts) AS alerts_deleted,
       (SELECT count(*) FROM streaks) AS streaks_closed,
       (SELECT count(*) FROM changes) AS changes_deleted,
       (SELECT count(*) FROM worker_job_runs WHERE job = %(job)s) AS runs_kept,
       (SELECT count(*) FROM worker_alerts WHERE job = %(job)s) AS alerts_kept;

-- name: fence_run
-- First inside each item's transaction: ARCHITECTURE.md, "Fencing" (worker_fence() is
-- created by migration 0005).
SELECT worker_fence(%(job)s, %(run_id)s, %(owner)s, %(idle_timeout_ms)s);

-- name: request_cancel
-- Ask a running run to stop (`POST /api/runs/ID/cancel`): whichever process runs it sees
-- the flag within CANCEL_CHECK_S. The run's row, with `running` false once it had ended.
UPDATE worker_job_runs
   SET cancel_requested_at = CASE WHEN status = 'running'
                                  THEN coalesce(cancel_requested_at, now())
                                  ELSE cancel_requested_at END
 WHERE id = %(id)s
RETURNING id, job, status = 'running' AS running, cancel_requested_at;

-- name: cancel_requested
SELECT cancel_requested_at IS NOT NULL AS cancel FROM worker_job_runs WHERE id = %(id)s;

-- name: run_progress
-- While a run goes on: its output so far and the progress its handler reported, for the
-- run page and `GET /api/runs/ID`.
UPDATE worker_job_runs
   SET output = %(output)s, progress_done = %(done)s, progress_total = %(total)s
 WHERE id = %(id)s AND status = 'running';
