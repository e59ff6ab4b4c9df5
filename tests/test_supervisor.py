"""Child processes as the supervisor runs them: real subprocesses, their groups, output, stdin."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker.supervisor import KILL_AFTER_S, Child

WAIT_S = 10.0  # the machine is shared and busy: generous, but every wait is bounded
KEEP = 64 * 1024


def start(argv: list[str], **kwargs: Any) -> Child:
    return Child.start(argv, env=os.environ, keep_bytes=KEEP, **kwargs)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until(predicate: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
    return value


def written_pid(path: Path) -> int:
    """The pid a child wrote to `path`, once it has."""
    return int(wait_until(lambda: path.exists() and path.read_text().strip()))


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by its new parent) is dead."""
    try:
        with open(f"/proc/{pid}/stat", encoding="latin-1") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_a_timeout_ends_the_whole_group_the_grandchild_too(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = start(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"])
    grandchild = written_pid(pidfile)

    assert child.wait(0.2) == "timeout"
    assert child.returncode == -signal.SIGTERM
    wait_until(lambda: not alive(grandchild))


def test_what_a_child_leaves_running_ends_when_it_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    child = start(["sh", "-c", f"sleep 60 & echo $! > {pidfile}"])

    assert child.wait(WAIT_S) is None
    assert child.returncode == 0
    wait_until(lambda: not alive(written_pid(pidfile)))


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = start(["sh", "-c", f'trap "" TERM; sleep 60 & echo $! > {ready}; wait'])
    grandchild = written_pid(ready)

    started = time.monotonic()
    child.terminate(kill_after_s=0.3)
    elapsed_s = time.monotonic() - started

    assert child.returncode == -signal.SIGKILL
    assert 0.3 <= elapsed_s < KILL_AFTER_S
    wait_until(lambda: not alive(grandchild))


def test_a_stop_ends_the_child_within_the_stop_grace() -> None:
    child = start(python("import time; time.sleep(60)"))
    started = time.monotonic()

    assert child.wait(60, should_stop=lambda: True, stop_grace_s=0.5) == "stopped"
    assert child.returncode == -signal.SIGTERM
    assert time.monotonic() - started < WAIT_S


def test_output_is_kept_up_to_a_bound_and_the_rest_counted() -> None:
    lines = "".join(f"line {i:06d}\n" for i in range(30_000))  # 360 KB, far over the bound
    code = "print(''.join(f'line {i:06d}\\n' for i in range(30_000)), end='')"
    child = start(python(code))

    assert child.wait(WAIT_S) is None
    text, dropped = child.output()
    assert dropped + len(text.encode()) == len(lines)
    assert KEEP <= len(text.encode()) < KEEP + 65536  # at most one read's worth over
    assert lines.endswith(text) and dropped > 0


def test_both_streams_arrive_interleaved_in_one_output() -> None:
    code = (
        "import sys; print('out', flush=True); sys.stderr.write('err\\n'); sys.stderr.flush();"
        " print('out again', flush=True)"
    )
    child = start(python(code))

    assert child.wait(WAIT_S) is None
    assert child.output() == ("out\nerr\nout again\n", 0)


def test_stdin_is_fed_whole_then_closed() -> None:
    given = "x" * 300_000 + "end"  # more than a pipe holds: written while the child reads
    code = "import sys; data = sys.stdin.read(); print(len(data), data[-3:])"
    child = start(python(code), stdin=given)

    assert child.wait(WAIT_S) is None
    assert child.output() == (f"{len(given)} end\n", 0)


def test_without_stdin_the_child_reads_an_empty_input() -> None:
    child = start(python("import sys; print(repr(sys.stdin.read()))"))

    assert child.wait(WAIT_S) is None
    assert child.output() == ("''\n", 0)


def test_a_program_that_cannot_start_raises_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        start(["no-such-program-7x"])
