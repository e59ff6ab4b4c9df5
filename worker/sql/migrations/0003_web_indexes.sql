-- Indexes for reading a long history page by page (ARCHITECTURE.md, "The HTTP endpoint").

-- Each job's latest run, latest completed run and latest success, as `worker status`, the
-- dashboard and /metrics read them (`job_status`: ORDER BY started_at DESC, id DESC LIMIT 1
-- per job): one index descent each, however many runs the job has, even for a job that has
-- not succeeded for weeks.
CREATE INDEX IF NOT EXISTS worker_job_runs_job_latest_idx
    ON worker_job_runs (job, started_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS worker_job_runs_job_completed_idx
    ON worker_job_runs (job, started_at DESC, id DESC)
 WHERE status IN ('success', 'partial', 'failed');
CREATE INDEX IF NOT EXISTS worker_job_runs_job_ran_idx
    ON worker_job_runs (job, started_at DESC, id DESC)
 WHERE status IN ('success', 'partial');

-- /metrics reads the runs that ended since its last scrape.
CREATE INDEX IF NOT EXISTS worker_job_runs_finished_idx ON worker_job_runs (finished_at);

-- The dashboard lists the alerts nobody acknowledged yet.
CREATE INDEX IF NOT EXISTS worker_alerts_open_idx ON worker_alerts (created_at)
 WHERE acknowledged_at IS NULL;
