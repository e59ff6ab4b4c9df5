"""Child processes in a process group of their own: started, fed, captured, waited for, ended.

Ending a child ends its whole group, so nothing it started outlives it: SIGTERM first, then
SIGKILL to whatever is still there after a grace period.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO

KILL_AFTER_S = 5.0  # a child told to end gets SIGTERM, then SIGKILL this much later
POLL_S = 0.05  # how often a wait checks the stop flag and the child


def _never() -> bool:
    return False


class Child:
    """A running child process, leader of its own process group.

    Its stdout and stderr, combined, are read on a thread of its own as it runs; at least the
    last `keep_bytes` of them are kept.
    """

    def __init__(self, process: subprocess.Popen[bytes], keep_bytes: int) -> None:
        self.process = process
        self._capture = _Capture(process, keep_bytes)

    @classmethod
    def start(
        cls,
        argv: list[str],
        *,
        env: Mapping[str, str],
        cwd: str | None = None,
        stdin: str | None = None,
        keep_bytes: int,
    ) -> Child:
        """Start `argv` (no shell) in a new session; OSError when it cannot be started.

        `stdin`, when given, is written whole and the pipe closed; else stdin is /dev/null.
        """
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: ending it ends all it started
        )
        child = cls(process, keep_bytes)
        if stdin is not None and process.stdin is not None:
            _write_stdin(process.stdin, stdin)
        return child

    @property
    def pid(self) -> int:
        """The child's pid, which is also its process group's id."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """Its exit code (negative: the signal that ended it); None while it runs."""
        return self.process.returncode

    def wait(
        self,
        timeout_s: float,
        *,
        should_stop: Callable[[], bool] = _never,
        stop_grace_s: float = KILL_AFTER_S,
        on_tick: Callable[[], None] | None = None,
    ) -> str | None:
        """Wait for the child to exit: None when it did by itself, else why it was ended.

        Past `timeout_s` it is terminated with KILL_AFTER_S of grace (`"timeout"`); once
        `should_stop()` is true, with `stop_grace_s` (`"stopped"`). Either way, and when it
        exits by itself, whatever it left running in its group is killed. `on_tick`, when
        given, is called every POLL_S while it runs (the run's live output and progress).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(POLL_S)
                # The run ends with its command: whatever it left running in its group ends too.
                self._signal_group(signal.SIGKILL)
                return None
            if time.monotonic() >= deadline:
                self.terminate(KILL_AFTER_S)
                return "timeout"
            if should_stop():
                self.terminate(stop_grace_s)
                return "stopped"
            if on_tick is not None:
                on_tick()

    def terminate(self, kill_after_s: float = KILL_AFTER_S) -> None:
        """SIGTERM to the child's whole process group, SIGKILL if it is still there
        `kill_after_s` later; returns once the child is reaped."""
        self._signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(kill_after_s)
        self._signal_group(signal.SIGKILL)  # also whatever it started that ignored SIGTERM
        self.process.wait()

    def output_so_far(self) -> str:
        """What was kept of its output up to now, decoded, while it runs."""
        return self._capture.snapshot()

    def output(self) -> tuple[str, int]:
        """What was kept of its output, decoded, and how many earlier bytes were not.

        Call it once the child has ended: it waits (at most KILL_AFTER_S) for the reader to
        see the end of the output.
        """
        return self._capture.text()

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


def _write_stdin(pipe: IO[bytes], text: str) -> None:
    try:
        pipe.write(text.encode())
        pipe.close()
    except BrokenPipeError:
        pass  # the child exited without reading: its output says why


class _Capture:
    """Reads a child's combined stdout and stderr, keeping only the last bytes."""

    def __init__(self, process: subprocess.Popen[bytes], keep_bytes: int) -> None:
        self._keep_bytes = keep_bytes
        self._chunks: list[bytes] = []
        self._kept = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        stdout = process.stdout
        assert isinstance(stdout, io.BufferedReader)
        for chunk in iter(lambda: stdout.read1(65536), b""):
            self._chunks.append(chunk)
            self._kept += len(chunk)
            while self._kept - len(self._chunks[0]) >= self._keep_bytes:
                self._kept -= len(self._chunks[0])
                self._dropped += len(self._chunks.pop(0))

    def snapshot(self) -> str:
        return b"".join(list(self._chunks)).decode("utf-8", "replace")

    def text(self) -> tuple[str, int]:
        """What was kept, decoded, and how many earlier bytes were not."""
        self._thread.join(KILL_AFTER_S)
        return b"".join(self._chunks).decode("utf-8", "replace"), self._dropped
