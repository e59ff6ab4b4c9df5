-- Runtime jobs' definitions in worker_jobs (source = 'runtime') and the record of every
-- change made through the API or the CLI (worker_job_changes); ARCHITECTURE.md, "Runtime
-- jobs". Each write and its change record are one statement.

-- name: create_job
-- A new runtime job of the `jobs` service; nothing when the name is taken (by any job).
WITH created AS (
    INSERT INTO worker_jobs (job, service, schedule, next_due_at, max_attempts, source,
                             definition, period_s, updated_at)
    VALUES (%(job)s, 'jobs', %(schedule)s, %(first_due)s, %(max_attempts)s, 'runtime',
            %(definition)s, %(period_s)s, now())
    ON CONFLICT (job) DO NOTHING
    RETURNING job, definition
), change AS (
    INSERT INTO worker_job_changes (job, action, before, after, actor)
    SELECT job, 'create', NULL, definition, %(actor)s FROM created
)
SELECT job FROM created;

-- name: update_job
-- A runtime job's new definition; a changed schedule text moves next_due_at to
-- `first_due`, an unchanged one keeps its phase. Nothing for a job that is not runtime.
WITH old AS (
    SELECT job, definition, schedule FROM worker_jobs
     WHERE job = %(job)s AND source = 'runtime'
       FOR UPDATE
), updated AS (
    UPDATE worker_jobs j
       SET definition = %(definition)s,
           schedule = %(schedule)s,
           max_attempts = %(max_attempts)s,
           period_s = %(period_s)s,
           next_due_at = CASE WHEN old.schedule IS DISTINCT FROM %(schedule)s
                              THEN %(first_due)s ELSE j.next_due_at END,
           updated_at = now()
      FROM old
     WHERE j.job = old.job
    RETURNING j.job
), change AS (
    INSERT INTO worker_job_changes (job, action, before, after, actor)
    SELECT job, 'update', definition, %(definition)s, %(actor)s FROM old
)
SELECT job FROM updated;

-- name: delete_job
-- A runtime job's row goes (its runs stay in the history); a run in progress is asked to
-- stop as a cancel would.
WITH gone AS (
    DELETE FROM worker_jobs WHERE job = %(job)s AND source = 'runtime'
    RETURNING job, definition, current_run_id
), cancelled AS (
    UPDATE worker_job_runs
       SET cancel_requested_at = coalesce(cancel_requested_at, now())
     WHERE id = (SELECT current_run_id FROM gone) AND status = 'running'
), change AS (
    INSERT INTO worker_job_changes (job, action, before, after, actor)
    SELECT job, 'delete', definition, NULL, %(actor)s FROM gone
)
SELECT job FROM gone;

-- name: record_change
-- A pause or resume, recorded beside the ledger's own write.
INSERT INTO worker_job_changes (job, action, before, after, actor)
VALUES (%(job)s, %(action)s, %(before)s, %(after)s, %(actor)s);

-- name: job_changes
-- One job's changes, newest first: walks (job, id).
SELECT id, job, action, before, after, actor, at
  FROM worker_job_changes
 WHERE job = %(job)s
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: job_source
-- Where a job comes from, and its definition when it is a runtime one.
SELECT job, service, source, declared_in, definition, schedule, paused, retired_at
  FROM worker_jobs
 WHERE job = %(job)s;

-- name: runtime_jobs
-- Every runtime job, by name (the CLI's list): walks worker_jobs_source_idx.
SELECT job, schedule, paused, definition, next_due_at, runs, successes, failures
  FROM worker_jobs
 WHERE source = 'runtime' AND job > %(after)s
 ORDER BY job
 LIMIT %(limit)s;
