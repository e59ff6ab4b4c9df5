"""What the handlers share of the database: one connection per handler thread, and the
/healthz probe on a fresh connection with a deadline."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from .. import db
from ..settings import Settings

CONNECT_TIMEOUT_S = 5


class Connections:
    """One database connection per handler thread, opened on first use and after it broke."""

    def __init__(self, settings: Settings) -> None:
        self._database = settings.database
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[db.Conn] = []

    @contextmanager
    def connection(self) -> Iterator[db.Conn]:
        conn: db.Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = db.connect(
                self._database, application_name="worker:web", connect_timeout_s=CONNECT_TIMEOUT_S
            )
            self._local.conn = conn
            with self._lock:
                self._open = [c for c in self._open if not c.closed] + [conn]
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open = []


class DatabaseCheck:
    """`SELECT 1` on a fresh connection, waited for at most a deadline.

    The probe runs on a thread of its own, so a database that never answers costs one
    waiting thread, never a handler; while one probe hangs, no second one is started.
    """

    def __init__(self, settings: Settings) -> None:
        self._database = settings.database
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None
        self._done = threading.Event()
        self._error: str | None = None

    def error(self, timeout_s: float) -> str | None:
        """None when the database answered within `timeout_s`; else why it did not."""
        with self._lock:
            if self._probe is None or not self._probe.is_alive():
                self._done = threading.Event()
                self._probe = threading.Thread(target=self._run, args=(self._done,), daemon=True)
                self._probe.start()
            done = self._done
        if not done.wait(timeout_s):
            return f"the database did not answer within {timeout_s:g} s"
        return self._error

    def _run(self, done: threading.Event) -> None:
        try:
            with db.connect(
                self._database, application_name="worker:healthz", connect_timeout_s=2
            ) as conn:
                conn.execute(db.query("db.ping"))
            self._error = None
        except psycopg.Error as exc:
            self._error = f"database unavailable: {db.describe_error(exc)}"
        done.set()
