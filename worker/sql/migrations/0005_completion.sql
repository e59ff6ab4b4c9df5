-- Every occurrence runs to an end (ARCHITECTURE.md, "Owed occurrences" and "Processes").
-- Upgrading from 0004 keeps every run: each becomes attempt 1.

-- A run that ends interrupted or abandoned leaves its occurrence owed: the job's row points
-- at it, and the next claim runs it again (trigger `retry`, the same `scheduled_for`,
-- `attempt` + 1), up to the job's `max_attempts`.
ALTER TABLE worker_job_runs
    ADD COLUMN IF NOT EXISTS attempt integer NOT NULL DEFAULT 1 CHECK (attempt >= 1);
ALTER TABLE worker_job_runs DROP CONSTRAINT IF EXISTS worker_job_runs_trigger_check;
ALTER TABLE worker_job_runs ADD CONSTRAINT worker_job_runs_trigger_check
    CHECK (trigger IN ('startup', 'schedule', 'manual', 'retry'));

ALTER TABLE worker_jobs
    ADD COLUMN IF NOT EXISTS owed_run_id  bigint,
    ADD COLUMN IF NOT EXISTS max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1);

-- At most one start per attempt of an occurrence (was: per occurrence).
DROP INDEX IF EXISTS worker_job_runs_occurrence_idx;
CREATE UNIQUE INDEX IF NOT EXISTS worker_job_runs_attempt_idx
    ON worker_job_runs (job, scheduled_for, attempt)
 WHERE scheduled_for IS NOT NULL AND trigger <> 'manual';

-- The runs in progress, for the reaper: every live process looks for dead ones each poll.
CREATE INDEX IF NOT EXISTS worker_job_runs_running_idx ON worker_job_runs (job)
 WHERE status = 'running';
-- Owed occurrences are due like requests are.
CREATE INDEX IF NOT EXISTS worker_jobs_owed_idx ON worker_jobs (service)
 WHERE owed_run_id IS NOT NULL;

-- The worker processes alive now: each daemon registers at start, refreshes last_seen_at
-- every poll and deletes its row on a clean stop; a row not seen for 3 polls is dead.
CREATE TABLE IF NOT EXISTS worker_processes (
    id           bigserial   PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    service      text        NOT NULL,
    version      text        NOT NULL,
    concurrency  integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    running      jsonb       NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX IF NOT EXISTS worker_processes_seen_idx ON worker_processes (last_seen_at);

-- Fencing (ARCHITECTURE.md, "Fencing"): called first inside each item's transaction. It
-- ends the transaction with SQLSTATE WK001 unless the run still holds its job's lease, and
-- holds the run's row FOR SHARE until the transaction ends, so no claim can take the job
-- over (the takeover marks that row abandoned) while a write of the old run is open. A
-- transaction-local idle timeout below the lease ends the transaction of a frozen process.
CREATE OR REPLACE FUNCTION worker_fence(p_job text, p_run_id bigint, p_owner text,
                                        p_idle_timeout_ms integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('idle_in_transaction_session_timeout', p_idle_timeout_ms || 'ms', true);
    PERFORM 1
       FROM worker_job_runs r
       JOIN worker_jobs j ON j.job = r.job
      WHERE r.id = p_run_id AND r.status = 'running'
        AND j.job = p_job AND j.current_run_id = p_run_id AND j.lease_owner = p_owner
        AND j.lease_until > now()
        FOR SHARE OF r;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % of job % no longer holds its lease', p_run_id, p_job
              USING ERRCODE = 'WK001';
    END IF;
END
$$;
