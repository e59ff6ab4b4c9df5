"""`worker job list|show|create|edit|delete`: runtime jobs from the command line, through the
API's own rules (`jobs/runtime.parse`) and store (`store/definitions`), every change
recorded with the actor `cli:<user>` (ARCHITECTURE.md, "Runtime jobs").

`worker jobs` (plural) stays the daemon. Exit codes as the rest of the command line: 0
done, 1 the database refused or cannot be reached, an unknown job, a name taken, a job
declared elsewhere; 2 a bad definition or argument (naming the field or parameter).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from . import db, logs, status
from .describe import describe
from .jobs import runtime
from .jobs.runtime import Definition, DefinitionError
from .registry import JobSpec
from .schedules import NEVER
from .settings import Settings
from .store import definitions, processes

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2  # cli.py's
CHANGES = 10  # the latest changes `show` prints
PAGE = 500  # runtime jobs read per statement by `list`
COUNTERS = ("runs", "successes", "failures")
OnDatabase = Callable[..., int]  # cli._on_database: connect, do the work, report a failure


class Refused(Exception):
    """A command that cannot be done as asked: its exit code and its one human line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def add_parser(sub: Any) -> None:
    """The `job` command and its actions."""
    job = sub.add_parser(
        "job", help="list, show, create, edit or delete runtime jobs (`jobs` is the daemon)"
    )
    verbs = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    listed = verbs.add_parser("list", help="runtime jobs: schedule, paused, next due, counters")
    _json_flag(listed)
    show = verbs.add_parser(
        "show", help="any job: where it is declared, its definition, counters, latest changes"
    )
    show.add_argument("name", metavar="JOB")
    _json_flag(show)
    create = verbs.add_parser("create", help="create a runtime job, run by the jobs service")
    create.add_argument("name", metavar="NAME")
    _definition_options(create, creating=True)
    edit = verbs.add_parser("edit", help="change a runtime job's definition (the API's PATCH)")
    edit.add_argument("name", metavar="JOB")
    _definition_options(edit, creating=False)
    delete = verbs.add_parser("delete", help="delete a runtime job; its run history stays")
    delete.add_argument("name", metavar="JOB")
    for verb in verbs.choices.values():
        verb.set_defaults(command_parser=verb)


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print it as JSON")


def _definition_options(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    parser.add_argument(
        "--handler", required=creating, metavar="H", help="a handler of WORKER_HANDLERS"
    )
    parser.add_argument(
        "--kwargs", metavar="JSON", help="its parameters, a JSON object: '{\"days\": 3}'"
    )
    when = parser.add_mutually_exclusive_group(required=creating)
    when.add_argument("--schedule", metavar="TEXT", help="cron text, `every N…` or `manual`")
    when.add_argument("--at", metavar="ISO", help="run once, at this ISO 8601 time")
    parser.add_argument("--timezone", metavar="ZONE", help="of a cron schedule (default UTC)")
    parser.add_argument("--timeout", type=int, metavar="S", help="seconds (default 3600)")
    parser.add_argument("--max-attempts", type=int, metavar="N", help="1 to 10 (default 3)")
    parser.add_argument("--description", metavar="TEXT")


def run(
    args: argparse.Namespace,
    config: Settings,
    jobs: Mapping[str, JobSpec],
    on_database: OnDatabase,
) -> int:
    """Do `worker job ACTION`; a refusal is one event and one human line."""
    action = _ACTIONS[args.job_command]
    try:
        return action(args, config, jobs, on_database)
    except Refused as exc:
        log = logs.get_logger(action=args.job_command, job=getattr(args, "name", None))
        log.warning("job_command_refused", error=exc.message)
        logs.say_error(exc.message)
        return exc.code


def actor() -> str:
    """`cli:<user>`, as `worker_job_changes.actor` records a change made here."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a bare container)
        user = str(os.getuid())
    return f"cli:{user}"


# --- reads ------------------------------------------------------------------------------


def _list(
    args: argparse.Namespace, config: Settings, jobs: Mapping[str, JobSpec], on: OnDatabase
) -> int:
    rows: list[dict[str, Any]] = []

    def read(conn: db.Conn) -> None:
        while True:
            page = definitions.runtime_jobs(conn, rows[-1]["job"] if rows else "", PAGE)
            rows.extend(page)
            if len(page) < PAGE:
                return

    failed = ("job_list_failed", "reading the runtime jobs of")
    code = on(config, "job", read, failed=failed)
    if code != EXIT_OK:
        return code
    listed = [_listed(row) for row in rows]
    if args.json:
        print(json.dumps({"jobs": listed}, indent=2))
    elif not listed:
        print("no runtime jobs: create one with `worker job create`")
    else:
        print(_table(listed), end="")
    return EXIT_OK


def _listed(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "job": row["job"],
        "schedule": row["schedule"],
        "paused": row["paused"],
        "next_due_at": status.iso(_due(row["next_due_at"])),
        "definition": row["definition"],
        "counters": {key: row[key] for key in COUNTERS},
    }


_COLUMNS = ("JOB", "HANDLER", "SCHEDULE", "PAUSED", "NEXT DUE (UTC)", "RUNS", "OK", "FAILED")


def _table(listed: list[dict[str, Any]]) -> str:
    cells = [_COLUMNS]
    for job in listed:
        paused, due = "yes" if job["paused"] else "no", _clock(job["next_due_at"])
        counts = (str(job["counters"][key]) for key in COUNTERS)
        cells.append(
            (job["job"], job["definition"]["handler"], job["schedule"], paused, due, *counts)
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "".join(line.rstrip() + "\n" for line in lines)


def _show(
    args: argparse.Namespace, config: Settings, jobs: Mapping[str, JobSpec], on: OnDatabase
) -> int:
    shown: dict[str, Any] = {}

    def read(conn: db.Conn) -> None:
        found = status.gather(conn, job=args.name).jobs
        if not found:
            raise Refused(EXIT_FAILURE, _not_in_ledger(args.name, jobs))
        shown.update(status.job_dict(found[0]), spec=describe(found[0]))
        changes = definitions.changes(conn, args.name, CHANGES)
        shown["changes"] = [_jsonable(row) for row in changes]

    code = on(config, "job", read, failed=("job_show_failed", "reading the job from"))
    if code != EXIT_OK:
        return code
    print(json.dumps(shown, indent=2) if args.json else _described(shown))
    return EXIT_OK


def _described(job: dict[str, Any]) -> str:
    """`show` for people: one `label  value` line each, then the latest changes."""
    where = {"system": "built in", "runtime": "created at run time"}
    pairs = [
        ("job", job["job"]),
        ("source", where.get(job["source"]) or f"the jobs file {job['declared_in']}"),
        ("service", job["service"]),
        ("schedule", job["schedule"]),
        ("cadence", job["cadence"]),
    ]
    definition = job["definition"] or {}
    for key in ("handler", "kwargs", "timezone", "timeout", "max_attempts", "description"):
        if key in definition:
            value = definition[key]
            shown = json.dumps(value) if key == "kwargs" else value
            shown = f"{value} s" if key == "timeout" else shown
            pairs.append((key.replace("_", " "), "-" if value is None else str(shown)))
    last = job["last_started_at"]
    counters = job["counters"]
    pairs += [
        ("paused", "yes" if job["paused"] else "no"),
        ("next due", f"{_clock(job['next_due_at'])} UTC" if job["next_due_at"] else "never"),
        ("last run", f"{_clock(last)} UTC {job['last_status']}" if last else "never run"),
        ("health", job["health"]),
        ("counters", ", ".join(f"{key} {value}" for key, value in counters.items())),
    ]
    lines = [f"{label:<13} {value}" for label, value in pairs]
    lines.append(f"changes (newest first, at most {CHANGES}):" if job["changes"] else "changes: -")
    for change in job["changes"]:
        fields = ", ".join(_changed_fields(change["before"], change["after"]))
        line = f"  {_clock(change['at'])}  {change['action']:<7} {change['actor']}  {fields}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _changed_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    if before is None or after is None:
        return []
    return sorted(key for key in {*before, *after} if before.get(key) != after.get(key))


# --- writes -----------------------------------------------------------------------------


def _create(
    args: argparse.Namespace, config: Settings, jobs: Mapping[str, JobSpec], on: OnDatabase
) -> int:
    name = _checked(lambda: runtime.check_name(args.name))
    if name in jobs:  # declared, perhaps not yet in the ledger: its service would take it
        raise Refused(EXIT_FAILURE, f"a job named {name!r} exists ({_where(jobs[name])})")
    catalogue = _handlers(config).catalogue()
    definition: Definition = _checked(lambda: runtime.parse(_fields(args), catalogue), catalogue)
    done: dict[str, Any] = {}

    def store(conn: db.Conn) -> None:
        db.migrate(conn)
        done["first_due"] = runtime.save(conn, name, definition, actor(), create=True)
        done["served"] = _served(conn)

    code = on(config, "job", store, failed=("job_create_failed", "creating the job in"), job=name)
    if code != EXIT_OK:
        return code
    if done["first_due"] is None:
        raise Refused(EXIT_FAILURE, f"a job named {name!r} exists")
    logs.get_logger().info(
        "runtime_job_created", job=name, handler=definition.handler, via="cli", actor=actor()
    )
    print(f"created {name}: {definition.handler}, {_next(definition, done['first_due'])}")
    if not done["served"]:
        print(
            "no live process of the jobs service runs it yet: start `worker jobs` (or `worker all`)"
        )
    return EXIT_OK


def _edit(
    args: argparse.Namespace, config: Settings, jobs: Mapping[str, JobSpec], on: OnDatabase
) -> int:
    fields = _fields(args)
    if not fields:
        raise Refused(EXIT_USAGE, "edit: nothing to change; give --schedule, --kwargs, ...")
    handlers = _handlers(config)
    done: dict[str, Any] = {}

    def store(conn: db.Conn) -> None:
        db.migrate(conn)
        current = _runtime_definition(conn, args.name, jobs, "edited")
        catalogue = handlers.catalogue()
        definition = _checked(lambda: runtime.parse(fields, catalogue, current), catalogue)
        if runtime.save(conn, args.name, definition, actor(), create=False) is None:  # deleted
            raise Refused(EXIT_FAILURE, _not_in_ledger(args.name, jobs))
        # An unchanged schedule keeps its phase: the due time is the row's, not a new one.
        found = status.gather(conn, job=args.name).jobs
        done.update(definition=definition, next_due=found[0].next_due_at if found else None)

    failed = ("job_edit_failed", "changing the job in")
    code = on(config, "job", store, failed=failed, job=args.name)
    if code != EXIT_OK:
        return code
    logs.get_logger().info("runtime_job_updated", job=args.name, via="cli", actor=actor())
    definition = done["definition"]
    print(f"updated {args.name}: {definition.handler}, {_next(definition, done['next_due'])}")
    return EXIT_OK


def _delete(
    args: argparse.Namespace, config: Settings, jobs: Mapping[str, JobSpec], on: OnDatabase
) -> int:
    def store(conn: db.Conn) -> None:
        db.migrate(conn)
        _runtime_definition(conn, args.name, jobs, "deleted")
        if not definitions.delete(conn, args.name, actor()):
            raise Refused(EXIT_FAILURE, _not_in_ledger(args.name, jobs))

    failed = ("job_delete_failed", "deleting the job from")
    code = on(config, "job", store, failed=failed, job=args.name)
    if code != EXIT_OK:
        return code
    logs.get_logger().info("runtime_job_deleted", job=args.name, via="cli", actor=actor())
    print(f"deleted {args.name}: its run history stays")
    return EXIT_OK


def _runtime_definition(
    conn: db.Conn, job: str, jobs: Mapping[str, JobSpec], done: str
) -> Definition:
    """The stored definition of a runtime job; Refused for any other job."""
    row = definitions.source(conn, job)
    if row is None:
        raise Refused(EXIT_FAILURE, _not_in_ledger(job, jobs, done))
    if row["source"] != "runtime":
        where = row["declared_in"] or "the worker itself (built in)"
        raise Refused(EXIT_FAILURE, _declared(job, where, done))
    return Definition.from_stored(row["definition"])


def _not_in_ledger(job: str, jobs: Mapping[str, JobSpec], done: str | None = None) -> str:
    spec = jobs.get(job)
    if spec is None:
        return f"no job {job!r}: `worker job list` shows the runtime jobs, `worker status` all"
    if done is not None:
        return _declared(job, spec.declared_in or "the worker itself (built in)", done)
    return f"{job} ({_where(spec)}) is not in the ledger yet: no {spec.service} process has started"


def _declared(job: str, where: str, done: str) -> str:
    return (
        f"{job} is declared in {where}: it can be paused, resumed and run, not {done} "
        "here; change it where it is declared"
    )


def _where(spec: JobSpec) -> str:
    return f"declared in {spec.declared_in}" if spec.declared_in else "built in"


def _handlers(config: Settings) -> runtime.Handlers:
    if not config.handlers:
        raise Refused(
            EXIT_USAGE,
            "WORKER_HANDLERS is not set: a runtime job runs a handler of its catalogue; "
            "set it to the app's handler directories or modules",
        )
    return runtime.Handlers(config)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options given, as the API's JSON body would hold them."""
    given = {
        "handler": args.handler,
        "schedule": args.schedule,
        "at": args.at,
        "timezone": args.timezone,
        "timeout": args.timeout,
        "max_attempts": args.max_attempts,
        "description": args.description,
    }
    fields = {key: value for key, value in given.items() if value is not None}
    if args.kwargs is not None:
        try:
            fields["kwargs"] = json.loads(args.kwargs)
        except ValueError as exc:
            raise Refused(EXIT_USAGE, f"kwargs: not JSON ({exc})") from None
    return fields


def _checked(make: Callable[[], Any], catalogue: Any = None) -> Any:
    """`make()`; a DefinitionError becomes exit 2 naming the field or parameter (an unknown
    handler's line also lists the catalogue's)."""
    try:
        return make()
    except DefinitionError as exc:
        message = str(exc)
        if exc.field == "handler" and catalogue is not None:
            names = ", ".join(h.name for h in catalogue if h.error is None) or "none"
            message += f" (handlers that can run: {names})"
        raise Refused(EXIT_USAGE, message) from None


def _served(conn: db.Conn) -> bool:
    return processes.unserved(conn, "jobs") is None


def _next(definition: Definition, first_due: Any) -> str:
    due = _due(first_due)
    when = "never due (runs when asked)" if due is None else f"next due {_clock(due)} UTC"
    return f"{definition.schedule}, {when}"


def _due(moment: Any) -> Any:
    return None if moment == NEVER else moment


def _clock(moment: Any) -> str:
    """A time for people, in UTC to the second: a datetime or ISO text; `-` for none."""
    if moment is None:
        return "-"
    text = moment if isinstance(moment, str) else status.iso(moment)
    assert text is not None
    return text.replace("T", " ")[:19]


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: status.iso(v) if hasattr(v, "isoformat") else v for k, v in row.items()}


_ACTIONS: dict[str, Callable[..., int]] = {
    "list": _list,
    "show": _show,
    "create": _create,
    "edit": _edit,
    "delete": _delete,
}
