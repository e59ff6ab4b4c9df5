-- Statements of no table group: settings local to a transaction, the health probe, the
-- database's clock, and the migrations' own bookkeeping (worker/db.py).

-- name: lock_timeout
-- Inside a transaction: a lock wait longer than this fails the statement.
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: statement_timeout
-- Inside a transaction: a statement running longer than this is cancelled.
SELECT set_config('statement_timeout', %(timeout)s, true);

-- name: ping
SELECT 1;

-- name: migration_lock
-- Transaction-level: concurrent `migrate` calls queue here, and nothing is session-scoped.
SELECT pg_advisory_xact_lock(%(namespace)s, hashtext(%(name)s));

-- name: migrations_table
CREATE TABLE IF NOT EXISTS worker_schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM worker_schema_migrations;

-- name: migration_record
INSERT INTO worker_schema_migrations (version) VALUES (%(version)s);

-- name: now
-- The database's clock: every replica judges time by the same one.
SELECT now() AS now;
