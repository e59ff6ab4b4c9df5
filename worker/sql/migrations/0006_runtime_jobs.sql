-- Runtime-managed jobs (ARCHITECTURE.md, "Runtime jobs"): jobs created, edited and deleted
-- through the API, each naming a handler of the catalogue and its kwargs; the counters every
-- job keeps through history pruning; parameters, progress and cancel on a run; the record
-- of every change.

-- Where a job comes from: `system` (built in), `file` (the jobs file, `declared_in` names
-- it) or `runtime` (`definition` holds it: handler, kwargs, schedule text, timezone,
-- timeout, max_attempts, description).
ALTER TABLE worker_jobs
    ADD COLUMN IF NOT EXISTS source      text   NOT NULL DEFAULT 'system',
    ADD COLUMN IF NOT EXISTS declared_in text,
    ADD COLUMN IF NOT EXISTS definition  jsonb,
    ADD COLUMN IF NOT EXISTS runs        bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS successes   bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS failures    bigint NOT NULL DEFAULT 0;
ALTER TABLE worker_jobs DROP CONSTRAINT IF EXISTS worker_jobs_source_check;
ALTER TABLE worker_jobs ADD CONSTRAINT worker_jobs_source_check
    CHECK (source IN ('system', 'file', 'runtime'));
ALTER TABLE worker_jobs DROP CONSTRAINT IF EXISTS worker_jobs_definition_check;
ALTER TABLE worker_jobs ADD CONSTRAINT worker_jobs_definition_check
    CHECK ((source = 'runtime') = (definition IS NOT NULL));

-- The counters start from the history kept so far.
UPDATE worker_jobs j
   SET runs = c.runs, successes = c.successes, failures = c.failures
  FROM (SELECT job,
               count(*) FILTER (WHERE status <> 'running') AS runs,
               count(*) FILTER (WHERE status = 'success') AS successes,
               count(*) FILTER (WHERE status IN ('failed', 'partial')) AS failures
          FROM worker_job_runs GROUP BY job) c
 WHERE c.job = j.job;

-- A run's parameters (a runtime job's, or those of a one-off "run with parameters"), its
-- progress as its handler reports it, and a cancel asked for by anyone.
ALTER TABLE worker_job_runs
    ADD COLUMN IF NOT EXISTS kwargs              jsonb,
    ADD COLUMN IF NOT EXISTS progress_done       bigint,
    ADD COLUMN IF NOT EXISTS progress_total      bigint,
    ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz;
ALTER TABLE worker_job_runs DROP CONSTRAINT IF EXISTS worker_job_runs_status_check;
ALTER TABLE worker_job_runs ADD CONSTRAINT worker_job_runs_status_check
    CHECK (status IN ('running', 'success', 'partial', 'failed', 'interrupted', 'abandoned',
                      'cancelled'));
-- The parameters of a waiting one-off request travel with the request.
ALTER TABLE worker_jobs ADD COLUMN IF NOT EXISTS run_requested_kwargs jsonb;

-- Every change made through the API or the CLI, newest last per job.
CREATE TABLE IF NOT EXISTS worker_job_changes (
    id     bigserial   PRIMARY KEY,
    job    text        NOT NULL,
    action text        NOT NULL CHECK (action IN ('create', 'update', 'delete', 'pause', 'resume')),
    before jsonb,
    after  jsonb,
    actor  text        NOT NULL,
    at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS worker_job_changes_job_idx ON worker_job_changes (job, id);
-- The job list pages through jobs by name within a source.
CREATE INDEX IF NOT EXISTS worker_jobs_source_idx ON worker_jobs (source, job);
-- The dashboard and /api/jobs page through every job by service, then name.
CREATE INDEX IF NOT EXISTS worker_jobs_service_job_idx ON worker_jobs (service, job);
