-- The worker's own tables: run history, per-job flags, alerts.
CREATE TABLE IF NOT EXISTS worker_job_runs (
    id          bigserial PRIMARY KEY,
    job         text        NOT NULL,
    trigger     text        NOT NULL CHECK (trigger IN ('startup', 'schedule', 'manual')),
    status      text        NOT NULL
                CHECK (status IN ('running', 'success', 'partial', 'failed', 'interrupted', 'abandoned')),
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    duration_ms bigint,
    total       integer     NOT NULL DEFAULT 0,
    succeeded   integer     NOT NULL DEFAULT 0,
    failed      integer     NOT NULL DEFAULT 0,
    error       text,
    details     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    host        text        NOT NULL,
    pid         integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS worker_job_runs_job_started_idx ON worker_job_runs (job, started_at DESC);
CREATE INDEX IF NOT EXISTS worker_job_runs_started_idx ON worker_job_runs (started_at);

CREATE TABLE IF NOT EXISTS worker_jobs (
    job        text        PRIMARY KEY,
    paused     boolean     NOT NULL DEFAULT false,
    paused_at  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS worker_alerts (
    id              bigserial PRIMARY KEY,
    type            text        NOT NULL,
    level           text        NOT NULL CHECK (level IN ('INFO', 'WARNING', 'ERROR')),
    job             text,
    message         text        NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz
);
CREATE INDEX IF NOT EXISTS worker_alerts_created_idx ON worker_alerts (created_at);
CREATE INDEX IF NOT EXISTS worker_alerts_job_type_idx ON worker_alerts (job, type, created_at DESC);
