-- Retired jobs and the staleness clock of a resume (ARCHITECTURE.md, "Retired jobs").
-- Upgrading from an earlier version keeps every row: nothing is retired until a process of
-- this version says what it runs.

-- What each live process runs: the names of its declared and built-in jobs (not the
-- runtime ones, which the ledger alone defines). NULL: a process of an older version, taken
-- to run every job of its service.
ALTER TABLE worker_processes ADD COLUMN IF NOT EXISTS jobs text[];

-- `retired_at`: when a declared or built-in job was found declared by no live process of
-- its service, every one of them having started without it. A retired job is out of the
-- status verdict, the dashboard's list, /api/jobs, /metrics and the watchdog; its history
-- stays, and declaring it again brings it back (NULL again).
-- `resumed_at`: the last resume of a paused job, where its staleness is counted from.
ALTER TABLE worker_jobs
    ADD COLUMN IF NOT EXISTS retired_at timestamptz,
    ADD COLUMN IF NOT EXISTS resumed_at timestamptz;

-- The declared and built-in jobs not retired, by service: what a retire check looks at.
CREATE INDEX IF NOT EXISTS worker_jobs_declared_idx ON worker_jobs (service)
 WHERE retired_at IS NULL AND source <> 'runtime';
