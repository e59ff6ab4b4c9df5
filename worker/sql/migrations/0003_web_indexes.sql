-- The HTTP endpoint's /metrics reads the runs that ended since its last scrape
-- (ARCHITECTURE.md, "The HTTP endpoint"): an index on finished_at keeps that a short range
-- scan however long the history is.
CREATE INDEX IF NOT EXISTS worker_job_runs_finished_idx ON worker_job_runs (finished_at);

-- The dashboard lists the alerts nobody acknowledged yet.
CREATE INDEX IF NOT EXISTS worker_alerts_open_idx ON worker_alerts (created_at)
 WHERE acknowledged_at IS NULL;
