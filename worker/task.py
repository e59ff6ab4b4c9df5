"""What a handler may call while it runs: `from worker import task`.

- `task.log(*args)`: a line of the run's output, there as it happens (the run page and
  `GET /api/runs/ID` show it while the run goes on). Seed 003's scripts keep their own
  `task_log(...)` calls with `task_log = task.log`.
- `task.progress(done, total)`: drives the run's progress bar.
- `task.should_stop()`: true once the run was asked to stop (a cancel, a shutdown, its
  lease lost). A handler that asks it is trusted to return soon; one that never asks is
  ended by the stop signal itself.

Outside a worker run (a handler called from a shell or a test) `log` prints and `progress`
does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

PROGRESS_ENV = "WORKER_TASK_PROGRESS"  # the file `progress` writes (worker.jobs.live reads it)
_stop = threading.Event()
_cooperative = threading.Event()  # the handler asked should_stop(): a SIGTERM only flags


def log(*args: Any, sep: str = " ") -> None:
    """Print a line of the run's output, flushed at once."""
    print(*args, sep=sep, flush=True)


def progress(done: int, total: int | None = None) -> None:
    """How far the run is: `done` of `total` items (total unknown: None)."""
    target = os.environ.get(PROGRESS_ENV)
    if not target:
        return
    path = Path(target)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"done": int(done), "total": total}), encoding="utf-8")
    os.replace(partial, path)  # the parent never reads half a write


def should_stop() -> bool:
    """Whether the run was asked to stop; from the first call on, a stop only sets this."""
    _cooperative.set()
    return _stop.is_set()


def install() -> None:
    """In the child interpreter of a run (`worker.call --handler`): SIGTERM ends the
    handler at once, unless it has asked `should_stop()`, in which case it only flags."""
    signal.signal(signal.SIGTERM, _on_stop)


def _on_stop(signum: int, frame: FrameType | None) -> None:
    _stop.set()
    if not _cooperative.is_set():
        sys.exit(128 + signum)
