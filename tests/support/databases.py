"""A database of a test's own on the session's server, for what the shared one cannot show:
a schema of an older version, or a count of commits no other test adds to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.conninfo import make_conninfo


@contextmanager
def own_database(server_url: str, name: str) -> Iterator[str]:
    """Database `name`, made empty (one left by an interrupted run goes first); its URL.
    Dropped at the end, connections and all."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
