-- The run and alert history, searched (ARCHITECTURE.md, "The HTTP endpoint": `/runs`,
-- `/alerts`): a filter by status or trigger, alone or with a job, walks its own index newest
-- first, however rare the value is among a million runs; a page after a cursor starts
-- where the last one ended. A filter by job alone walks worker_job_runs_job_latest_idx
-- (0003), a date range alone the (started_at) index (0001). Plain CREATE INDEX: migrations
-- run in one transaction, and a worker's history tables are written by the worker alone.
CREATE INDEX IF NOT EXISTS worker_job_runs_status_started_idx
    ON worker_job_runs (status, started_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS worker_job_runs_trigger_started_idx
    ON worker_job_runs (trigger, started_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS worker_job_runs_job_status_started_idx
    ON worker_job_runs (job, status, started_at DESC, id DESC);

-- Alerts by type, newest first (by job: worker_alerts_job_type_idx, 0001).
CREATE INDEX IF NOT EXISTS worker_alerts_type_created_idx
    ON worker_alerts (type, created_at DESC, id DESC);
