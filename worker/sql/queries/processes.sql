-- Processes: one worker_processes row per live daemon (ARCHITECTURE.md, "Processes").

-- name: register_process
-- A daemon's row, inserted at start. A row of this host and pid is a dead process's (a pid
-- is one process at a time): it goes first. The service is remembered in worker_services
-- (the watchdog's memory of which services had processes), live as of now. `jobs`: the
-- declared and built-in jobs it runs, from which jobs no process runs are retired.
WITH gone AS (
    DELETE FROM worker_processes WHERE host = %(host)s AND pid = %(pid)s
), seen AS (
    INSERT INTO worker_services (service) VALUES (%(service)s)
    ON CONFLICT (service) DO UPDATE SET last_live_at = now()
)
INSERT INTO worker_processes (host, pid, service, version, concurrency, jobs)
VALUES (%(host)s, %(pid)s, %(service)s, %(version)s, %(concurrency)s, %(jobs)s)
RETURNING id;

-- name: deregister_process
-- A clean stop: the row goes, and its service was live until now.
WITH gone AS (
    DELETE FROM worker_processes WHERE id = %(id)s RETURNING service
)
UPDATE worker_services s
   SET last_live_at = now()
  FROM gone
 WHERE s.service = gone.service;

-- name: prune_processes
-- Rows of processes not seen for a day: long dead, and of no interest to anyone.
DELETE FROM worker_processes WHERE last_seen_at < now() - interval '1 day';

-- name: list_processes
-- Every worker process that registered (ARCHITECTURE.md, "Processes"): alive while seen
-- within `dead_after_s` (3 polls), else dead (killed, frozen, or cut off). `jobs`: the
-- declared and built-in jobs it runs (NULL: every job of its service, an older version's).
SELECT id, host, pid, service, version, concurrency, started_at, last_seen_at, running, jobs,
       last_seen_at > now() - make_interval(secs => %(dead_after_s)s) AS alive
  FROM worker_processes
 ORDER BY service, started_at, id;

-- name: declared_by
-- The live processes of `service` (its own or `all` ones) that run `job` (or may: an older
-- version's runs every job of its service), for `worker forget`'s refusal and a run
-- request's.
SELECT service, host, pid
  FROM worker_processes
 WHERE last_seen_at > now() - make_interval(secs => %(dead_after_s)s)
   AND service IN (%(service)s, 'all')
   AND (jobs IS NULL OR %(job)s = ANY(jobs))
 ORDER BY service, host, pid;
