"""Command line: parse, configure, dispatch."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import psycopg

from . import db, dbcli, jobcli, jobscheck, ledgercli, logs, registry, service, settings
from .daemon import Daemon
from .registry import SERVICE_ALIASES, SERVICES, JobSpec, jobs_of
from .settings import ConfigError, Settings
from .vocab import Refusal, RunStatus

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_CLAIMED_ELSEWHERE = 0, 1, 2, 3
ONE_SHOT_CONNECT_TIMEOUT_S = 10.0


# What SERVICE_TYPE may name when no command is given (the image's and Railway's way).
SERVICE_TYPES = "quota (alias tavily_quota_updater), cleanup, replenish, jobs, all, migrate"
_TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker",
        description="Background maintenance for an app, on its own PostgreSQL.",
        epilog="With no COMMAND, SERVICE_TYPE names it: " + SERVICE_TYPES + ".",
    )
    parser.add_argument("--version", action="version", version=f"worker {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SERVICES:
        daemon = sub.add_parser(name, help=_service_help(name))
        daemon.add_argument("--once", action="store_true", help="run each job once, then exit")
        daemon.add_argument(
            "--due",
            action="store_true",
            help="with --once: only the jobs whose next due time has come (for cron platforms)",
        )
        _dry_run_flag(daemon)
    run = sub.add_parser("run", help="run one job now in this process")
    run.add_argument("job", metavar="JOB")
    run.add_argument(
        "--request", action="store_true", help="ask the running service to run it instead"
    )
    _dry_run_flag(run)
    check = sub.add_parser(
        "jobs-check",
        help="validate the jobs file; print each job, its schedule and next due times",
    )
    check.add_argument(
        "--import",
        dest="require_imports",
        action="store_true",
        help="a python job whose package is not importable here is an error, not a note",
    )
    migrate = sub.add_parser("migrate", help="create or upgrade the worker's tables")
    migrate.add_argument(
        "--app-tables", action="store_true", help="also create the reference app tables"
    )
    for verb in ("pause", "resume"):
        flag = sub.add_parser(verb, help=f"{verb} a job for every replica")
        flag.add_argument("job", metavar="JOB")
    ledgercli.add_forget_parser(sub)
    jobcli.add_parser(sub)
    dbcli.add_parser(sub)
    report = sub.add_parser("status", help="each job's last run, next due time and health")
    report.add_argument("--json", action="store_true", help="print the status as JSON")
    report.add_argument("--service", metavar="NAME", help="only the jobs of this service")
    # Each command remembers its parser, so an unknown flag shows that command's usage.
    for command_parser in sub.choices.values():
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def _service_help(name: str) -> str:
    if name == "jobs":
        return "run the jobs service as a daemon (the jobs file's jobs, and runtime jobs)"
    if name == "all":
        return "run every job in one process (built-in, the jobs file's, and runtime jobs)"
    jobs = ", ".join(spec.name for spec in jobs_of(name))
    return f"run the {name} service as a daemon ({jobs})"


def _version() -> str:
    try:
        return importlib.metadata.version("worker")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_arguments(argv: Sequence[str], env: Mapping[str, str]) -> argparse.Namespace:
    """The arguments, SERVICE_TYPE naming the command when none is given; exit 2 on a usage
    error, with the usage of the command it concerns."""
    parser = build_parser()
    argv = _with_service_type(list(argv), env, parser)
    # Everything after `db psql` is psql's, options included.
    passed_on = argv[2:] if argv[:2] == ["db", "psql"] else []
    args, unknown = parser.parse_known_args(argv[: len(argv) - len(passed_on)])
    if passed_on:
        args.psql_args = passed_on
    if unknown:
        owner = getattr(args, "command_parser", parser)
        owner.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _with_service_type(
    argv: list[str], env: Mapping[str, str], parser: argparse.ArgumentParser
) -> list[str]:
    """`SERVICE_TYPE=quota worker --once` is `worker quota --once`."""
    if argv and (not argv[0].startswith("-") or argv[0] in _TOP_LEVEL_FLAGS):
        return argv
    service_type = env.get("SERVICE_TYPE", "").strip()
    if not service_type:
        parser.error(f"a COMMAND is required, or SERVICE_TYPE set to one of: {SERVICE_TYPES}")
    command = SERVICE_ALIASES.get(service_type, service_type)
    if command not in (*SERVICES, "migrate"):
        parser.error(f"unknown SERVICE_TYPE {service_type!r}; use one of: {SERVICE_TYPES}")
    return [command, *argv]


def _dry_run_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would change; write nothing"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m worker` and the `worker` console script."""
    env = settings.load_environment()
    args = parse_arguments(sys.argv[1:] if argv is None else argv, env)
    try:
        config, loaded = _configure(args, env)
    except ConfigError as exc:
        return _usage_error(str(exc))
    config, jobs = _one_shot_timeout(args, env, config), loaded.jobs
    if args.command == "jobs-check":
        return jobscheck.run(config, loaded, out=sys.stdout, require_imports=args.require_imports)
    logs.SECRETS.add(
        [
            config.replenish_api_token,
            config.database.password,
            env.get("WORKER_HTTP_TOKEN"),
            *(secret for spec in jobs.values() for secret in spec.secrets),
        ]
    )
    # `status`, `job` and `db` own stdout (a table, JSON, a URL, psql): their log goes to stderr.
    log_stream = sys.stderr if args.command in ("status", "job", "db") else None
    logs.configure(config.log_level, config.log_format, stream=log_stream)
    for old in config.deprecated:
        logs.get_logger().warning(
            "setting_deprecated", variable=old.old, replacement=old.new, message=old.note
        )
    try:
        if args.command == "db":
            return dbcli.run(args, config)
        if args.command == "status":
            return dbcli.status(args, config)
        config = dbcli.with_database(config)
    except ConfigError as exc:
        return _usage_error(str(exc))
    _report_run_time_problems(args, loaded)
    return _dispatch(args, config, jobs)


def _configure(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[Settings, registry.Loaded]:
    """Settings and jobs, every argument checked: ConfigError before anything runs.

    The jobs file stops only what would run a job it garbles (README, "Your own jobs").
    """
    service_name = args.command if args.command in SERVICES else None
    config = settings.from_env(
        env,
        service=service_name,
        stdout_is_tty=sys.stdout.isatty(),
        need_database=args.command != "jobs-check",
    )
    loaded = registry.load(config, env)
    blocking = loaded.blocking(service_name) if service_name is not None else []
    if blocking:
        more = f" (and {len(blocking) - 1} more: see jobs-check)" if len(blocking) > 1 else ""
        raise ConfigError(blocking[0].message + more)
    jobs = loaded.jobs
    _check_job_argument(args, loaded, config)
    _check_service_argument(args)
    if getattr(args, "due", False) and not args.once:
        raise ConfigError("--due: only with --once")
    runtime_only = service_name == "jobs" and bool(config.handlers) and not args.once
    if service_name is not None and not registry.select(jobs, service_name) and not runtime_only:
        raise ConfigError(
            f"the {service_name} service has no jobs: declare some in WORKER_JOBS_FILE"
            + (
                ", or set WORKER_HANDLERS to create them at run time"
                if service_name == "jobs"
                else ""
            )
        )
    return config, loaded


def _report_run_time_problems(args: argparse.Namespace, loaded: registry.Loaded) -> None:
    """A job this command runs that will fail for want of its token variable: one event and
    one line now, and each of its runs fails saying so; the other jobs run."""
    if args.command in SERVICES:
        names = {spec.name for spec in registry.select(loaded.jobs, args.command)}
    else:
        names = {args.job} if args.command == "run" else set()
    for problem in loaded.problems:
        if not problem.at_start and problem.job in names:
            logs.get_logger().error("job_misconfigured", job=problem.job, error=problem.message)
            logs.say_error(f"{problem.message}: the job's runs fail until it is set")


def _dispatch(args: argparse.Namespace, config: Settings, jobs: dict[str, JobSpec]) -> int:
    if args.command in SERVICES:
        selected, disabled = registry.runnable(registry.select(jobs, args.command), config)
        for spec, variable in disabled:  # only `all` gets here with some: the others refuse
            logs.get_logger().info("job_disabled", job=spec.name, variable=variable)
        daemon = Daemon(config, SERVICES[args.command], dry_run=args.dry_run, jobs=selected)
        return daemon.run(once=args.once, due_only=args.due)
    if args.command == "run":
        return _run_job(config, jobs[args.job], request=args.request, dry_run=args.dry_run)
    if args.command == "forget":
        return ledgercli.forget(args, config, _on_database)
    if args.command == "migrate":
        return _migrate(config, app_tables=args.app_tables)
    if args.command == "job":
        return jobcli.run(args, config, jobs, _on_database)
    paused = args.command == "pause"
    return ledgercli.set_paused(config, args.job, jobs, _on_database, paused=paused)


def _check_job_argument(
    args: argparse.Namespace, loaded: registry.Loaded, config: Settings
) -> None:
    job, jobs = getattr(args, "job", None), loaded.jobs
    if args.command in ("pause", "resume", "forget"):
        return  # any job of the ledger: a runtime one, or one no service declares any more
    problem = None if job is None else loaded.problem_of(job)
    if problem is not None and args.command == "run":
        raise ConfigError(problem.message)
    if job is not None and job not in jobs and problem is None:
        raise ConfigError(f"JOB: unknown job {job!r}; known jobs: {', '.join(jobs)}")
    variable = jobs[job].missing(config) if job is not None and args.command == "run" else None
    if variable is not None:
        raise ConfigError(f"{variable} is required by the {job} job")


def _check_service_argument(args: argparse.Namespace) -> None:
    name = getattr(args, "service", None)
    if name in SERVICE_ALIASES:
        args.service = name = SERVICE_ALIASES[name]
    if name is not None and name not in SERVICES:
        raise ConfigError(
            f"--service: unknown service {name!r}; known services: {', '.join(SERVICES)}"
        )


def _migrate(config: Settings, *, app_tables: bool) -> int:
    applied: list[str] = []
    code = _on_database(
        config,
        "migrate",
        lambda conn: applied.extend(db.migrate(conn, app_tables=app_tables)),
        failed=("migrate_failed", "migrating"),
    )
    if code == EXIT_OK:
        logs.get_logger().info("migrate_completed", applied=applied, app_tables=app_tables)
    return code


def _on_database(
    config: Settings,
    name: str,
    work: Callable[[db.Conn], object],
    *,
    failed: tuple[str, str],
    **fields: Any,
) -> int:
    """A one-shot command's database work: connect (within its wait), `work`, exit code.

    `failed` is the event and the human wording (`migrating`...) of a statement that fails.
    """
    log = logs.get_logger()
    conn = service.connect(config, threading.Event(), log, f"worker:{name}")
    if isinstance(conn, int):
        return EXIT_FAILURE
    try:
        with conn:
            work(conn)
    except psycopg.Error as exc:
        return _failed(log, *failed, config, exc, **fields)
    return EXIT_OK


def _failed(
    log: Any, event: str, doing: str, config: Settings, exc: psycopg.Error, **fields: Any
) -> int:
    """A command's database statement failed: its event, one human line, exit 1."""
    error, host = db.describe_error(exc), config.database.host
    log.error(event, error=error, db_host=host, **fields)
    logs.say_error(f"{doing} the database at db_host={host}: {error}")
    return EXIT_FAILURE


def _run_job(config: Settings, spec: JobSpec, *, request: bool, dry_run: bool) -> int:
    """`worker run JOB`: exit 0 success/partial, 1 failed, 3 claimed elsewhere."""
    if request:
        return ledgercli.request_run(config, spec, _on_database)
    outcome = Daemon(config, SERVICES["all"], dry_run=dry_run, jobs=[spec]).run_now(spec)
    if isinstance(outcome, int):
        return outcome
    print(f"{spec.name}: {outcome.value}", file=sys.stderr)
    if outcome is Refusal.CLAIMED_ELSEWHERE:
        return EXIT_CLAIMED_ELSEWHERE
    return EXIT_FAILURE if outcome in (RunStatus.FAILED, Refusal.UNKNOWN) else EXIT_OK


def _usage_error(message: str) -> int:
    logs.say_error(message)
    return EXIT_USAGE


def _one_shot_timeout(
    args: argparse.Namespace, env: Mapping[str, str], config: Settings
) -> Settings:
    """A command that runs once and exits waits at most ONE_SHOT_CONNECT_TIMEOUT_S for the
    database unless DB_CONNECT_TIMEOUT_SECONDS says otherwise; daemons keep its default."""
    daemon = args.command in SERVICES and not args.once
    if daemon or env.get("DB_CONNECT_TIMEOUT_SECONDS", "").strip():
        return config
    return replace(config, db_connect_timeout_s=ONE_SHOT_CONNECT_TIMEOUT_S)
