"""The worker's own tables, one module per group; each is the only executor of the named
queries in `worker/sql/queries/<module>.sql` (ARCHITECTURE.md, "The store").

- `ledger`: `worker_jobs` and `worker_job_runs` through a run's lifecycle (claims,
  leases, outcomes, requests, pauses) and the fence of a run's writes.
- `processes`: `worker_processes`, one row per live daemon, and `worker_services`, the
  services that ever had one.
- `alerts`: `worker_alerts`, written by the alert path and acknowledged from the dashboard,
  and `worker_streaks`, the watchdog's open streaks, each changed with its alert.
- `reads`: what `worker status`, the dashboard, the JSON API and `/metrics` read of the
  ledger and the run history.
- `watchdog`: the watchdog's read, once a poll, of what may open or close a streak.
- `history`: the run and alert history searched by filters, page by page.

Job modules keep the SQL of the app tables they own (`quota.sql`, `cleanup.sql`,
`replenish.sql`).
"""
