-- Processes: one worker_processes row per live daemon (ARCHITECTURE.md, "Processes").

-- name: register_process
-- A daemon's row, inserted at start. A row of this host and pid is a dead process's (a pid
-- is one process at a time): it goes first.
WITH gone AS (
    DELETE FROM worker_processes WHERE host = %(host)s AND pid = %(pid)s
)
INSERT INTO worker_processes (host, pid, service, version, concurrency)
VALUES (%(host)s, %(pid)s, %(service)s, %(version)s, %(concurrency)s)
RETURNING id;

-- name: deregister_process
DELETE FROM worker_processes WHERE id = %(id)s;

-- name: prune_processes
-- Rows of processes not seen for a day: long dead, and of no interest to anyone.
DELETE FROM worker_processes WHERE last_seen_at < now() - interval '1 day';

-- name: list_processes
-- Every worker process that registered (ARCHITECTURE.md, "Processes"): alive while seen
-- within `dead_after_s` (3 polls), else dead (killed, frozen, or cut off).
SELECT id, host, pid, service, version, concurrency, started_at, last_seen_at, running,
       last_seen_at > now() - make_interval(secs => %(dead_after_s)s) AS alive
  FROM worker_processes
 ORDER BY service, started_at, id;
