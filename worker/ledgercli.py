"""`worker pause|resume JOB`, `worker run JOB --request` and `worker forget JOB`: the commands
that act on a job's row in the ledger, whatever declared it (a built-in, the jobs file, the
API), as the dashboard does (ARCHITECTURE.md, "Retired jobs").

Each says what it did in one human line on stderr (the log keeps stdout); a refusal is one
event and one `worker: error:` line. Exit codes as the rest of the command line: 0 done (or
nothing to change), 1 a refusal, or the database refused or cannot be reached; 2 `pause` or
`resume` of a job neither declared here nor in the ledger.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any

from . import db, logs, service
from .jobcli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Refused, actor
from .jobs import runtime
from .registry import JobSpec
from .settings import Settings
from .store import definitions, ledger, processes

OnDatabase = Callable[..., int]  # cli._on_database: connect, do the work, report a failure


def add_forget_parser(sub: Any) -> None:
    forget = sub.add_parser(
        "forget", help="remove a job no process runs any more from the ledger, for good"
    )
    forget.add_argument("job", metavar="JOB")
    forget.add_argument(
        "--delete-history",
        action="store_true",
        help="also delete its runs, alerts and recorded changes (kept by default)",
    )


def _say(message: str) -> None:
    print(logs.SECRETS(message) if logs.SECRETS else message, file=sys.stderr)


def _refused(command: str, job: str, exc: Refused) -> int:
    logs.get_logger(command=command, job=job).warning("job_command_refused", error=exc.message)
    logs.say_error(exc.message)
    return exc.code


def set_paused(
    config: Settings,
    job: str,
    known: Mapping[str, JobSpec],
    on_database: OnDatabase,
    *,
    paused: bool,
) -> int:
    """Pause or resume the job's ledger row: any job the ledger holds (a runtime one too),
    or a built-in or declared one no service registered yet (`known`)."""
    done: list[ledger.PauseChange] = []

    def flag(conn: db.Conn) -> None:
        db.migrate(conn)
        if definitions.source(conn, job) is None and job not in known:
            raise Refused(
                EXIT_USAGE,
                f"JOB: unknown job {job!r}; known jobs: {', '.join(known)}; nor is it in the "
                "ledger",
            )
        done.append(runtime.set_paused(conn, job, paused, actor()))

    failed = ("pause_failed", "setting the pause flag in")
    command = "pause" if paused else "resume"
    try:
        code = on_database(config, command, flag, failed=failed, job=job)
    except Refused as exc:
        return _refused(command, job, exc)
    if code != EXIT_OK:
        return code
    [change] = done
    event = "job_paused_set" if paused else "job_resumed"
    logs.get_logger().info(event, job=job, changed=change.changed, via="cli")
    _say(_pause_line(job, paused, change))
    return EXIT_OK


def _pause_line(job: str, paused: bool, change: ledger.PauseChange) -> str:
    if paused and change.changed:
        return f"paused {job}: no replica starts it until `worker resume {job}`"
    if paused:
        assert change.paused_at is not None
        since = change.paused_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{job} is already paused (since {since}): nothing changed"
    if change.changed:
        return f"resumed {job}: it runs again from its next due time"
    return f"{job} is not paused: nothing changed"


def request_run(config: Settings, spec: JobSpec, on_database: OnDatabase) -> int:
    """`worker run JOB --request`: ask a live process of the job's service to run it; refused
    (exit 1, naming the service) when none serves it, as the API answers 409."""
    log = logs.get_logger()

    def request(conn: db.Conn) -> None:
        db.migrate(conn)
        refusal = processes.unserved(conn, spec.service, spec.name)
        if refusal is not None:
            raise Refused(EXIT_FAILURE, f"{spec.name}: {refusal}")
        service.register(conn, config, [spec], log)
        ledger.request_run(conn, spec.name)

    failed = ("request_failed", "requesting a run in")
    try:
        code = on_database(config, "request", request, failed=failed, job=spec.name)
    except Refused as exc:
        return _refused("run", spec.name, exc)
    if code == EXIT_OK:
        log.info("run_requested", job=spec.name)
    return code


def forget(args: argparse.Namespace, config: Settings, on_database: OnDatabase) -> int:
    """`worker forget JOB`: the job's ledger row goes (its history stays unless
    `--delete-history`); refused for a runtime job, a job a live process still runs, and
    while a run of it goes on."""
    job: str = args.job
    done: list[ledger.Forgotten] = []

    def work(conn: db.Conn) -> None:
        db.migrate(conn)
        row = definitions.source(conn, job)
        if row is None:
            raise Refused(EXIT_FAILURE, f"no job {job!r} in the ledger: nothing to forget")
        if row["source"] == "runtime":
            raise Refused(
                EXIT_FAILURE, f"{job} is a runtime job: delete it with `worker job delete {job}`"
            )
        running = processes.declared_by(conn, job, row["service"])
        if running:
            where = row["declared_in"] or "the worker itself (built in)"
            names = ", ".join(f"{p['service']} {p['host']}:{p['pid']}" for p in running)
            raise Refused(
                EXIT_FAILURE,
                f"{job} is still run by live process {names}: remove it from {where} and "
                "restart them, then forget it",
            )
        forgotten = ledger.forget(conn, job, history=args.delete_history)
        if not forgotten.forgotten:
            raise Refused(EXIT_FAILURE, f"a run of {job} is in progress: forget it once it ends")
        done.append(forgotten)

    try:
        code = on_database(config, "forget", work, failed=("forget_failed", "forgetting a job in"))
    except Refused as exc:
        return _refused("forget", job, exc)
    if code != EXIT_OK:
        return code
    [gone] = done
    logs.get_logger().info(
        "job_forgotten",
        job=job,
        runs_deleted=gone.runs_deleted,
        alerts_deleted=gone.alerts_deleted,
        runs_kept=gone.runs_kept,
        alerts_kept=gone.alerts_kept,
    )
    if args.delete_history:
        _say(
            f"forgot {job} and its history: {gone.runs_deleted} runs and "
            f"{gone.alerts_deleted} alerts deleted"
        )
    else:
        _say(
            f"forgot {job}: its ledger row is gone; its {gone.runs_kept} runs and "
            f"{gone.alerts_kept} alerts are kept as history (--delete-history deletes them)"
        )
    return EXIT_OK
