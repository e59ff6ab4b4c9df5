-- The schedule ledger (ARCHITECTURE.md, "The schedule ledger"): where each job stands lives
-- here, not in a process's memory. Upgrading from 0001 keeps every run and pause flag.
ALTER TABLE worker_jobs
    ADD COLUMN IF NOT EXISTS service          text,
    ADD COLUMN IF NOT EXISTS schedule         text,
    ADD COLUMN IF NOT EXISTS next_due_at      timestamptz,
    ADD COLUMN IF NOT EXISTS run_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS run_requested_by text
        CHECK (run_requested_by IN ('startup', 'manual')),
    ADD COLUMN IF NOT EXISTS lease_owner      text,
    ADD COLUMN IF NOT EXISTS lease_until      timestamptz,
    ADD COLUMN IF NOT EXISTS current_run_id   bigint;

ALTER TABLE worker_job_runs
    ADD COLUMN IF NOT EXISTS scheduled_for timestamptz,
    ADD COLUMN IF NOT EXISTS output        text,
    ADD COLUMN IF NOT EXISTS result        jsonb;

-- Each scheduled occurrence has at most one run: the claim hands every occurrence out
-- once, and this index would refuse a second run row for it if that ever broke.
CREATE UNIQUE INDEX IF NOT EXISTS worker_job_runs_occurrence_idx
    ON worker_job_runs (job, scheduled_for)
 WHERE scheduled_for IS NOT NULL AND trigger <> 'manual';
