"""A worker child process as users run it, with its JSON log lines collected: the one
process helper of the tests (the `spawn` fixture) and the benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
DATABASE_VARS = ("PG", "POSTGRES_")  # never inherited: a test names its database itself
# What every test child runs with, under the test's own variables.
BASE_ENV = {
    "ENVIRONMENT": "test",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "DEBUG",
    "RETRY_BASE_DELAY_SECONDS": "0",
    "REPLENISH_RETRY_DELAY_MS": "0",
    "HTTP_TIMEOUT_SECONDS": "2",
    "DB_CONNECT_TIMEOUT_SECONDS": "5",
    "SHUTDOWN_GRACE_SECONDS": "5",
}


class WorkerProcess:
    """`python -m worker ...` as users run it, with its JSON log lines collected.

    Whatever else it prints is kept too, and checked when the test ends (`noise`): a
    traceback, or a stdout line that is not JSON, fails the test unless it was started with
    `expect_noise=True`; so does a line on stderr the test never read (`stderr()`).
    """

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        *,
        expect_noise: bool = False,
        launcher: list[str] | None = None,
        inherit_env: bool = True,
    ) -> None:
        """Start `python -m worker ARGS`, or `launcher` (a command line of its own) instead.

        With `inherit_env`, the child gets this process's environment (less any database
        variable) under BASE_ENV under `env`; without it, `env` alone (the benchmarks').
        """
        self.started = time.monotonic()
        self.expect_noise = expect_noise
        # These print their answer on stdout (their log goes to stderr): only a traceback
        # there is noise.
        self._stdout_is_output = args[:1] in (["status"], ["jobs-check"])
        self.stdout_noise: list[str] = []
        self.stderr_lines: list[str] = []
        self._stderr_read = False
        full_env = dict(env)
        if inherit_env:
            full_env = {k: v for k, v in os.environ.items() if not k.startswith(DATABASE_VARS)}
            full_env.pop("DATABASE_URL", None)
            full_env.update({**BASE_ENV, **env})
        self.proc = subprocess.Popen(
            launcher or [sys.executable, "-m", "worker", *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except ValueError:  # a traceback line, say
                    self.stdout_noise.append(line)
                self._changed.notify_all()

    def _read_stderr(self) -> None:
        # JSON lines are log lines (`status` logs to stderr); the rest is what `noise` checks.
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._changed:
            return [e for e in self.lines if name is None or e.get("event") == name]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def count(self, event: str) -> int:
        return len(self.events(event))

    def wait_for(
        self, event: str, timeout_s: float = 15.0, *, times: int = 1, **fields: Any
    ) -> dict[str, Any]:
        """Block until the `times`-th log line with `event` (and `fields`) appears, and return
        it; fail after the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = [
                    line
                    for line in self.lines
                    if line.get("event") == event
                    and all(line.get(k) == v for k, v in fields.items())
                ]
                if len(found) >= times:
                    return found[times - 1]
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {event!r} in the log; got {[e.get('event') for e in self.lines]}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def signal(self, sig: int = signal.SIGTERM) -> float:
        """Send `sig`; return the monotonic time it was sent."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        return sent

    def wait(self, timeout_s: float = 15.0) -> int:
        code = self.proc.wait(timeout_s)
        self._reader.join(5)
        self._stderr_reader.join(5)
        return code

    def stderr(self) -> str:
        """Everything it wrote on stderr (once it has exited): the test has now seen it."""
        self._stderr_reader.join(15)
        self._stderr_read = True
        return "".join(self.stderr_lines)

    def noise(self) -> list[str]:
        """What it printed that no test asked for: tracebacks, non-JSON stdout, unread stderr."""
        self._reader.join(5)
        self._stderr_reader.join(5)
        if self.expect_noise:
            return []
        unread = [] if self._stderr_read else [x for x in self.stderr_lines if not _json(x)]
        traceback = [line for line in self.stderr_lines if "Traceback" in line]
        stdout = self.stdout_noise
        if self._stdout_is_output:
            stdout = [line for line in stdout if "Traceback" in line]
        return [*stdout, *(unread or traceback)]

    def terminate_timed(self, timeout_s: float = 10.0) -> tuple[float, int | None]:
        """SIGTERM; return (seconds until the process exited, exit code or None if it did not)."""
        sent = self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return time.monotonic() - sent, None
        return time.monotonic() - sent, code

    def close(self) -> None:
        """Stop it (SIGTERM, then SIGKILL if it lingers) and reap it."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def _json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True
