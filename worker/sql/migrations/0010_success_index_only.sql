-- Each job's latest success (`job_status`'s `ran`) read from the index alone. The partial
-- index of completed runs (0003) can answer the same walk, filtering out the failures; for
-- a job that has failed for weeks that is every run of its history (tens of milliseconds
-- on every status read, /metrics scrape and dashboard page), and the two cost the planner
-- the same, so the sample ANALYZE draws picked one or the other. With `finished_at` in the
-- index of successes the walk needs no table page, and the planner prefers it outright.
DROP INDEX IF EXISTS worker_job_runs_job_ran_idx;
CREATE INDEX worker_job_runs_job_ran_idx
    ON worker_job_runs (job, started_at DESC, id DESC) INCLUDE (finished_at)
 WHERE status IN ('success', 'partial');
