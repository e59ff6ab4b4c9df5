-- The watchdog (ARCHITECTURE.md, "Watchdog"): every live process checks, once a poll, what
-- no process sees on its own: jobs nobody claims, services with no live process, runs far
-- slower than usual. Upgrading from 0005 keeps every row.

-- A job's period (its schedule's longest gap between occurrences), written when a process
-- registers the job: a job is overdue a tenth of it after its due time, at least a minute.
-- NULL on rows no process of this version registered yet (then: the minute).
ALTER TABLE worker_jobs ADD COLUMN IF NOT EXISTS period_s integer;

-- The jobs that may be overdue, oldest due first: not paused, due before now less the
-- least grace. An idle check reads none of them.
CREATE INDEX IF NOT EXISTS worker_jobs_overdue_idx ON worker_jobs (next_due_at) WHERE NOT paused;

-- Every service a daemon ever ran, and when one of its processes was last known live (its
-- start, or its clean stop). A process's own row goes on a clean stop and is pruned a day
-- after it died; this memory stays, so a service that had processes and has none now is
-- told apart from one that never had any (run from cron with --once, say).
CREATE TABLE IF NOT EXISTS worker_services (
    service       text        PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_live_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO worker_services (service, first_seen_at, last_live_at)
SELECT service, min(started_at), max(last_seen_at) FROM worker_processes GROUP BY service
    ON CONFLICT (service) DO NOTHING;

-- The watchdog's open streaks: one row per (type, subject) while it lasts. However many
-- processes see the same job overdue at once, the first insert takes the key and raises
-- the alert in the same statement; the others find the key taken and raise nothing.
-- `type`: JOB_OVERDUE (subject: the job), SERVICE_DOWN (the service), RUN_SLOW (the run's
-- id); `since`: the occurrence missed, the service's last live moment, the run's start;
-- `alert_id`: the alert that opened it.
CREATE TABLE IF NOT EXISTS worker_streaks (
    type      text        NOT NULL,
    subject   text        NOT NULL,
    since     timestamptz NOT NULL,
    alert_id  bigint      NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (type, subject)
);
