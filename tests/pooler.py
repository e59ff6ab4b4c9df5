"""PgBouncer in transaction pooling mode in front of the test server, for the pooler tests.

`with pgbouncer(server_url) as bouncer:` runs `/usr/sbin/pgbouncer` as a subprocess on a
free loopback port, with every database of that server behind it (`* =`); `bouncer.url(db)`
is a pooled URL, and leaving the block ends the process by its PID. PgBouncer refuses to
run as root: as root it runs as the embedded PostgreSQL's OS user (`embedded_postgres`),
else as the current user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

BINARY = "/usr/sbin/pgbouncer"
RUN_AS_WHEN_ROOT = ("embedded_postgres", "nobody")
POOL_SIZE = 2  # few server connections, so transactions of different clients really share them
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
PORT_ATTEMPTS = 3


@dataclass
class PgBouncer:
    """A running PgBouncer: its process, port and log, and the server it fronts."""

    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    server: dict[str, str]

    def url(self, dbname: str | None = None) -> str:
        """A libpq URL to `dbname` (default: the server URL's database) through the pooler."""
        return make_conninfo(
            host="127.0.0.1",
            port=str(self.port),
            dbname=dbname or self.server.get("dbname", "postgres"),
            user=self.server.get("user", "postgres"),
        )

    def log(self) -> str:
        return (self.workdir / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        """End the process by its PID (SIGTERM: immediate shutdown; SIGKILL if it lingers)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.workdir, ignore_errors=True)


def restart(bouncer: PgBouncer, down_s: float) -> None:
    """Stop PgBouncer (every client connection cut), wait `down_s`, start it again on the
    same port with the same configuration."""
    bouncer.proc.send_signal(signal.SIGTERM)
    bouncer.proc.wait(STOP_TIMEOUT_S)
    time.sleep(down_s)  # the outage itself: how long the pooler is away
    uid, gid = _run_as()
    with open(bouncer.workdir / "pgbouncer.log", "ab") as log:
        bouncer.proc = subprocess.Popen(
            [require_binary(), str(bouncer.workdir / "pgbouncer.ini")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **_as_user(uid, gid),
        )
    if not _wait_until_accepting(bouncer):
        pytest.fail(f"pgbouncer did not start again:\n{bouncer.log()}")


def require_binary() -> str:
    """The pgbouncer binary; skip without it locally, fail without it in CI."""
    found = BINARY if os.path.exists(BINARY) else shutil.which("pgbouncer")
    if found:
        return found
    message = "pgbouncer is not installed (apt-get install pgbouncer)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling) in front of the server of `server_url`, until exit."""
    binary = require_binary()
    server = {k: str(v) for k, v in conninfo_to_dict(server_url).items() if v is not None}
    bouncer = _start(binary, server, _run_as())
    try:
        yield bouncer
    finally:
        bouncer.stop()


def _start(binary: str, server: dict[str, str], owner: tuple[int, int]) -> PgBouncer:
    # The free port is picked before PgBouncer binds it: if another process took it in
    # between, PgBouncer exits at once, and a new port is tried.
    for _ in range(PORT_ATTEMPTS):
        bouncer = _launch(binary, server, owner)
        try:
            if _wait_until_accepting(bouncer):
                return bouncer
        except BaseException:
            bouncer.stop()
            raise
        log = bouncer.log()
        bouncer.stop()
        if "in use" not in log:
            pytest.fail(f"pgbouncer exited with {bouncer.proc.returncode}:\n{log}")
    pytest.fail(f"pgbouncer found no free port in {PORT_ATTEMPTS} attempts")


def _launch(binary: str, server: dict[str, str], owner: tuple[int, int]) -> PgBouncer:
    uid, gid = owner
    workdir = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    os.chown(workdir, uid, gid)
    workdir.chmod(0o755)
    port = _free_port()
    config = workdir / "pgbouncer.ini"
    config.write_text(_config(server, port, workdir))
    userlist = workdir / "userlist.txt"
    userlist.write_text(f'"{server.get("user", "postgres")}" ""\n')
    for path in (config, userlist):
        os.chown(path, uid, gid)
        path.chmod(0o644)
    with open(workdir / "pgbouncer.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **_as_user(uid, gid),
        )
    return PgBouncer(proc, port, workdir, server)


def _config(server: dict[str, str], port: int, workdir: Path) -> str:
    target = {
        "host": server.get("host", "127.0.0.1"),
        "port": server.get("port", "5432"),
        "user": server.get("user", "postgres"),
    }
    if server.get("password"):
        target["password"] = server["password"]
    backend = " ".join(f"{key}={_quoted(value)}" for key, value in target.items())
    return "\n".join(
        [
            "[databases]",
            f"* = {backend}",
            "",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"admin_users = {target['user']}",  # SHOW STATS: proof the traffic went through
            f"auth_file = {workdir / 'userlist.txt'}",
            "pool_mode = transaction",
            "max_client_conn = 500",
            f"default_pool_size = {POOL_SIZE}",
            "min_pool_size = 0",
            "reserve_pool_size = 0",
            "ignore_startup_parameters = extra_float_digits,options",
            "server_check_delay = 0",
            "log_connections = 0",
            "log_disconnections = 0",
            "",
        ]
    )


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'" if (" " in value or "'" in value) else value


def _run_as() -> tuple[int, int]:
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    for name in RUN_AS_WHEN_ROOT:
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            return entry.pw_uid, entry.pw_gid
    pytest.fail(f"pgbouncer refuses root and none of {RUN_AS_WHEN_ROOT} exists")


def _as_user(uid: int, gid: int) -> dict[str, object]:
    if os.geteuid() != 0:
        return {}
    return {"user": uid, "group": gid, "extra_groups": []}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_accepting(bouncer: PgBouncer) -> bool:
    """True once a client can connect and query; False if the process exited first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while bouncer.proc.poll() is None:
        try:
            with psycopg.connect(bouncer.url(), connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not accept connections: {exc}\n{bouncer.log()}")
        time.sleep(0.05)  # a bounded connect loop: the poll interval, not a wait for a result
    return False
