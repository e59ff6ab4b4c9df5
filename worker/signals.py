"""Stop signals: the first asks for a graceful stop, the second ends the process at once."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_CODE = 1


@contextmanager
def on_stop(callback: Callable[[str], None]) -> Iterator[None]:
    """Call `callback(signal_name)` on the first SIGTERM/SIGINT while the block runs.

    The callback runs inside the signal handler, so it must only set flags (no I/O, no
    raising): an exception there could abort a transaction half-way. A second signal exits
    immediately. Handlers are restored on leaving. Off the main thread this does nothing,
    since Python delivers signals to the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        if received > 1:
            os._exit(FORCED_EXIT_CODE)
        callback(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
