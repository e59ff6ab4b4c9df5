"""A database that refuses for good (wrong role, wrong database name) fails at once with its
own line; an unreachable one is retried, and the line says how long it really was."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.support.processes import WorkerProcess
from worker import db

Spawn = Callable[..., WorkerProcess]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def human_lines(process: WorkerProcess) -> list[str]:
    return [line for line in process.stderr().splitlines() if line.startswith("worker: ")]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            'connection to server at "10.0.0.5", port 5432 failed: FATAL:  password '
            'authentication failed for user "app"',
            'password authentication failed for user "app"',
        ),
        ('... failed: FATAL:  database "nope" does not exist', 'database "nope" does not exist'),
        ('... failed: FATAL:  role "ghost" does not exist', 'role "ghost" does not exist'),
        (
            '... failed: FATAL:  no pg_hba.conf entry for host "10.0.0.9", user "app"',
            'no pg_hba.conf entry for host "10.0.0.9", user "app"',
        ),
        ("... port 1 failed: Connection refused\n\tIs the server running on that host", None),
        ("... failed: FATAL:  the database system is starting up", None),
        ("... failed: FATAL:  sorry, too many clients already", None),
    ],
)
def test_only_what_retrying_cannot_change_is_permanent(text: str, reason: str | None) -> None:
    assert db.permanent_refusal(psycopg.OperationalError(text)) == reason


@pytest.mark.parametrize(
    "wrong", [{"dbname": "no_such_database"}, {"user": "no_such_role"}], ids=["db", "role"]
)
def test_a_wrong_database_or_role_fails_at_once(
    server_url: str, spawn: Spawn, wrong: dict[str, str]
) -> None:
    url = make_conninfo(server_url, **wrong)
    started = time.monotonic()
    # A daemon would retry for 60 s, a one-shot command for 10 s: neither may wait.
    daemon = spawn("quota", env={"DATABASE_URL": url, "DB_CONNECT_TIMEOUT_SECONDS": "60"})
    one_shot = spawn("migrate", env={"DATABASE_URL": url, "DB_CONNECT_TIMEOUT_SECONDS": "60"})
    health = spawn("status", env={"DATABASE_URL": url})
    assert daemon.wait(30) == 1
    assert one_shot.wait(30) == 1
    assert health.wait(30) == 2  # the health check's code for a database it cannot use
    assert time.monotonic() - started < 10

    name = wrong.get("dbname") or wrong["user"]
    for process in (daemon, one_shot):
        assert not process.events("database_unavailable")  # no retry
        assert not process.events("database_unreachable")
        [event] = process.events("database_refused")
        assert name in event["error"] and "does not exist" in event["error"]
    for process in (daemon, one_shot, health):
        [line] = human_lines(process)
        assert line.startswith("worker: error: the database server at db_host=")
        assert "refused the connection" in line and f'"{name}" does not exist' in line
        assert "cannot reach" not in line


def test_an_unreachable_database_says_how_long_it_was_tried(spawn: Spawn) -> None:
    url = f"postgresql://app:pw@127.0.0.1:{closed_port()}/app"
    started = time.monotonic()
    one_shot = spawn("migrate", env={"DATABASE_URL": url, "DB_CONNECT_TIMEOUT_SECONDS": "1.5"})
    assert one_shot.wait(30) == 1
    elapsed_s = time.monotonic() - started
    [line] = human_lines(one_shot)
    found = re.search(r"\(gave up after (\d+) attempts in ([\d.]+) s\)", line)
    assert found is not None, line
    assert int(found[1]) == len(one_shot.events("database_unavailable")) >= 2
    assert 1.5 <= float(found[2]) <= elapsed_s
    [event] = one_shot.events("database_unreachable")
    assert event["attempts"] == int(found[1]) and event["timeout_seconds"] == 1.5


def test_status_on_a_refused_port_says_one_attempt_not_the_timeout(spawn: Spawn) -> None:
    url = f"postgresql://app:pw@127.0.0.1:{closed_port()}/app"
    started = time.monotonic()
    health = spawn("status", env={"DATABASE_URL": url})
    assert health.wait(30) == 2
    elapsed_s = time.monotonic() - started
    [line] = human_lines(health)
    found = re.search(r"\(gave up after 1 attempt in ([\d.]+) s\)", line)
    assert found is not None, line
    assert float(found[1]) <= elapsed_s < 5  # refused at once: not "after 5 s"
    [event] = [json.loads(x) for x in health.stderr().splitlines() if x.startswith("{")]
    assert event["event"] == "database_unreachable" and event["attempts"] == 1
