"""PostgreSQL access: connections, named SQL and migrations."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .settings import Database

Conn = psycopg.Connection[dict[str, Any]]

# The migration's transaction-level advisory lock lives in its own key space.
LOCK_NAMESPACE = 0x574B5231  # "WKR1"
_MIGRATION_LOCK = "worker:migrate"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$")


# What a server answers when retrying cannot help: the role cannot log in (authentication,
# pg_hba.conf) or the role or database named does not exist. SQLSTATE class 28 and 3D000
# when libpq reports one; the server's FATAL text otherwise (libpq reports none at connect).
_PERMANENT_SQLSTATES = ("28000", "28P01", "3D000")
_PERMANENT = re.compile(
    r"FATAL:\s+((?:password|SCRAM|Ident|Peer|PAM|LDAP|RADIUS|certificate) authentication failed"
    r"[^\n]*|no pg_hba\.conf entry[^\n]*|role \"[^\"]*\" does not exist"
    r"|database \"[^\"]*\" does not exist|role \"[^\"]*\" is not permitted to log in)"
)


class DatabaseUnavailable(Exception):
    """The database could not be reached within the allowed time: `attempts` attempts in
    `waited_s` seconds."""

    def __init__(self, error: str, *, attempts: int, waited_s: float) -> None:
        super().__init__(error)
        self.attempts = attempts
        self.waited_s = waited_s


class DatabaseRefused(Exception):
    """The server answered and refused the connection for good (`permanent_refusal`): no
    retry was made, none could help."""


def connect(
    database: Database, *, application_name: str = "worker", connect_timeout_s: int = 10
) -> Conn:
    """An autocommit connection returning dict rows; one short transaction per unit of work.

    Nothing is prepared server-side (`prepare_threshold=None`): behind a transaction-pooling
    PgBouncer the next statement may land on another server connection.
    """
    return psycopg.connect(
        database.conninfo,
        autocommit=True,
        row_factory=dict_row,
        prepare_threshold=None,
        connect_timeout=connect_timeout_s,
        application_name=application_name,
    )


def connect_with_backoff(
    database: Database,
    *,
    timeout_s: float,
    should_stop: Callable[[], bool],
    wait: Callable[[float], object],
    on_failure: Callable[[int, str], None],
    application_name: str = "worker",
) -> Conn | None:
    """Connect, retrying with capped exponential backoff for up to `timeout_s`.

    Returns None when stopped while waiting; raises DatabaseUnavailable when time runs out,
    DatabaseRefused at once when the server refuses the role or the database for good.
    `on_failure(attempt, error)` is called for each failed attempt that will be retried.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    delay_s = 0.5
    attempt = 0
    while True:
        attempt += 1
        try:
            return connect(database, application_name=application_name)
        except psycopg.OperationalError as exc:
            refusal = permanent_refusal(exc)
            if refusal is not None:
                raise DatabaseRefused(refusal) from None
            on_failure(attempt, describe_error(exc))
            now = time.monotonic()
            if deadline - now <= 0:
                waited_s = now - started
                raise DatabaseUnavailable(
                    describe_error(exc), attempts=attempt, waited_s=waited_s
                ) from None
            remaining_s = deadline - now
        wait(min(delay_s, remaining_s))
        if should_stop():
            return None
        delay_s = min(delay_s * 2, 5.0)


def permanent_refusal(exc: BaseException) -> str | None:
    """The server's reason when a connection failed for good (authentication failed, no
    such role or database), else None: a refused port, a timeout or a server starting up
    may pass, and are retried."""
    if not isinstance(exc, psycopg.OperationalError):
        return None
    match = _PERMANENT.search(str(exc))
    if match is not None:
        return match.group(1).strip()
    if exc.sqlstate in _PERMANENT_SQLSTATES:
        return describe_error(exc)
    return None


def describe_error(exc: BaseException) -> str:
    """A one-line description of a database error, free of connection secrets."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        sqlstate = exc.sqlstate or "-"
        return f"{exc.diag.message_primary} (sqlstate {sqlstate})"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first_line


@functools.cache
def _queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted(_sql_folder("queries").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            namespace = entry.name.removesuffix(".sql")
            _parse_queries(entry.read_text(encoding="utf-8"), namespace, found)
    return found


def _parse_queries(text: str, namespace: str, into: dict[str, str]) -> None:
    """The named queries of one file, as `NAMESPACE.NAME` (the file's own table group)."""
    name: str | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), "-- name: _end"]:
        match = _NAME.match(line.strip())
        if match:
            if name is not None:
                into[name] = "\n".join(lines).strip().rstrip(";")
            name, lines = f"{namespace}.{match.group(1)}", []
            if name in into:
                raise ValueError(f"query {name!r} is defined twice")
        elif name is not None and not line.lstrip().startswith("--"):
            lines.append(line)


def query(name: str) -> str:
    """The SQL text of a named query, `FILE.NAME`: `-- name: NAME` in
    worker/sql/queries/FILE.sql (`db.query("ledger.claim_job")`)."""
    try:
        return _queries()[name]
    except KeyError:
        raise KeyError(f"no SQL query named {name!r}") from None


def limit_lock_wait(conn: Conn, timeout_ms: int) -> None:
    """Inside a transaction: any lock wait longer than `timeout_ms` fails the statement.

    Transaction-local, so it ends with the transaction. Jobs use it so that a row the app
    keeps locked fails one item instead of stalling the whole pass behind it.
    """
    conn.execute(query("db.lock_timeout"), {"timeout": f"{timeout_ms}ms"})


def migrate(conn: Conn, *, app_tables: bool = False) -> list[str]:
    """Apply the worker's missing migrations (and the reference app tables when asked).

    Safe to run from several processes at once: the work happens under a transaction-level
    advisory lock, and every migration is recorded in `worker_schema_migrations`.
    Returns the names of the migrations applied by this call.
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute(
            query("db.migration_lock"), {"namespace": LOCK_NAMESPACE, "name": _MIGRATION_LOCK}
        )
        conn.execute(query("db.migrations_table"))
        done = {r["version"] for r in conn.execute(query("db.migrations_applied"))}
        for name, sql_text in _migrations():
            if name in done:
                continue
            conn.execute(sql_text.encode())
            conn.execute(query("db.migration_record"), {"version": name})
            applied.append(name)
        if app_tables:
            conn.execute(_sql_folder().joinpath("app_tables.sql").read_bytes())
    return applied


def _migrations() -> list[tuple[str, str]]:
    folder = _sql_folder("migrations")
    files = sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return [(e.name.removesuffix(".sql"), e.read_text(encoding="utf-8")) for e in files]


def _sql_folder(*parts: str) -> Traversable:
    return resources.files("worker").joinpath("sql", *parts)


def storable(value: Any) -> Any:
    """`value` in a form PostgreSQL's text and jsonb hold, so that a run's output, error or
    result never fails its record: every NUL character in its text (strings, and the keys
    and strings of lists and dicts within it) replaced by U+FFFD, and a float JSON has no
    number for named as Python's json writes it (`"NaN"`, `"Infinity"`, `"-Infinity"`)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value


def process_identity() -> tuple[str, int]:
    """(host, pid) recorded on run rows so an operator can find the process."""
    return os.uname().nodename, os.getpid()


def now(conn: Conn) -> datetime:
    """The database's clock: every replica judges due times by the same one."""
    row = conn.execute(query("db.now")).fetchone()
    assert row is not None
    return row["now"]  # type: ignore[no-any-return]
