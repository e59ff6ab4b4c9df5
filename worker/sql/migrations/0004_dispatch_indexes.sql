-- The loop's one read (`due_jobs`, ARCHITECTURE.md, "The loop"): the due jobs of its
-- services and the next future due time are index probes, so an idle loop costs the same
-- with 10 jobs as with 10,000.
CREATE INDEX IF NOT EXISTS worker_jobs_service_due_idx ON worker_jobs (service, next_due_at);
CREATE INDEX IF NOT EXISTS worker_jobs_requested_idx ON worker_jobs (service)
 WHERE run_requested_at IS NOT NULL;
