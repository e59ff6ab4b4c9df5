"""The command line's local database: `worker db psql|url|stop`, the embedded server a
command starts (and migrates) when no database is configured, and `status`, which only
reads it."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from . import db, embedded, logs
from . import status as status_report
from .settings import ConfigError, Settings

EXIT_OK, EXIT_FAILURE = 0, 1


def add_parser(sub: Any) -> None:
    """The `db` command and its actions, on the command line's subparsers."""
    embedded_db = sub.add_parser(
        "db", help="the embedded PostgreSQL (no database configured, outside production)"
    )
    verbs = embedded_db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    psql = verbs.add_parser("psql", help="psql on it, starting it for as long as psql runs")
    psql.add_argument("psql_args", nargs="*", metavar="ARGS", help="passed on to psql")
    verbs.add_parser("url", help="print its connection URL, starting it and leaving it running")
    verbs.add_parser("stop", help="stop it, unless a worker process still uses it")


def with_database(config: Settings) -> Settings:
    """Start the embedded server when no database is configured (outside production only)."""
    if config.database.source != "embedded":
        return config
    log = logs.get_logger()
    log.info("embedded_database_starting", data_dir=str(config.database.embedded_dir))
    config = replace(config, database=embedded.start(config.database))
    with db.connect(config.database) as conn:
        applied = db.migrate(conn, app_tables=True)
    # Reported here, where they happen: later steps find nothing left to apply.
    log.info("embedded_database_ready", db_host=config.database.host, migrations_applied=applied)
    return config


def status(args: argparse.Namespace, config: Settings) -> int:
    """`worker status`: reads only. An embedded database is started (or joined) to be read,
    never created or migrated: one that does not exist yet has no jobs registered."""
    database = config.database
    if database.source == "embedded":
        if not embedded.exists(database):
            note = f"the embedded database {embedded.location(database)} does not exist yet"
            return status_report.report_empty(config, note, as_json=args.json, out=sys.stdout)
        config = replace(config, database=embedded.start(database))
    return status_report.run(config, service=args.service, as_json=args.json, out=sys.stdout)


def run(args: argparse.Namespace, config: Settings) -> int:
    """`worker db psql|url|stop`: the embedded server between runs."""
    database = config.database
    if database.source != "embedded":
        raise ConfigError(
            f"db: only for the embedded database; this process uses {database.source} "
            f"(db_host={database.host})"
        )
    if args.db_command == "psql":
        return embedded.psql(with_database(config).database, args.psql_args)
    if args.db_command == "url":
        print(embedded.start(database, stop_at_exit=False).conninfo)
        return EXIT_OK
    stopped = embedded.stop(database)
    if stopped.users:
        logs.say_error(
            f"the embedded server is in use by worker processes {stopped.users}; stop them first"
        )
        return EXIT_FAILURE
    where = embedded.location(database)
    print(
        f"stopped the embedded server at {where}"
        if stopped.was_running
        else f"the embedded server at {where} was not running"
    )
    return EXIT_OK
