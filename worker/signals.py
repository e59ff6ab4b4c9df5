"""Stop signals: the first asks for a graceful stop, the second ends the process at once.

The handler itself does nothing. CPython's C-level handler writes the signal number to a
wake-up socket (`signal.set_wakeup_fd`), and a watcher thread reading that socket makes
the callback. So no lock is ever taken inside a handler: `threading.Event.set()` there
could deadlock against the main thread's own `Event.wait()` holding the same lock.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORCED_EXIT_CODE = 1


@contextmanager
def on_stop(callback: Callable[[str], None]) -> Iterator[None]:
    """Call `callback(signal_name)` from a watcher thread on the first SIGTERM/SIGINT.

    A second signal exits the process at once, even while the main thread is blocked.
    Handlers and the wake-up fd are restored on leaving. Off the main thread this does
    nothing, since Python delivers signals to the main thread only.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    watcher = threading.Thread(
        target=_watch, args=(reader, callback), name="signal-watcher", daemon=True
    )
    previous = {sig: signal.signal(sig, _ignore) for sig in STOP_SIGNALS}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(OSError):
            writer.shutdown(socket.SHUT_WR)  # the watcher reads end-of-file and returns
        writer.close()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: the wake-up fd already carries the signal."""


def _watch(reader: socket.socket, callback: Callable[[str], None]) -> None:
    stop_numbers = {int(sig) for sig in STOP_SIGNALS}
    received = 0
    with reader:
        while data := reader.recv(64):
            for signum in data:
                if signum not in stop_numbers:
                    continue
                received += 1
                if received > 1:
                    os._exit(FORCED_EXIT_CODE)
                callback(signal.Signals(signum).name)


class Shutdown:
    """A process's one stop: asked for by a signal (from the watcher thread) or a caller,
    logged once off the handler, and bounded by the grace period. While `handling()` runs,
    SIGTERM/SIGINT ask for it; if the block has not ended `grace_s` after the ask, the
    process ends (PostgreSQL rolls back whatever transaction was open: nothing is
    half-written)."""

    def __init__(self, grace_s: float, log: Any, wake: threading.Event) -> None:
        self.grace_s = grace_s
        self.log = log
        self.event = threading.Event()  # set by threads only, never inside a signal handler
        self.signal: str | None = None
        self._wake = wake  # the loop's: a stop wakes it at once
        self._exited = threading.Event()
        self._announced = threading.Event()

    def request(self, signal_name: str | None = None) -> None:
        self.signal = signal_name
        self.event.set()
        self._wake.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    @contextmanager
    def handling(self) -> Iterator[None]:
        watcher = threading.Thread(target=self._watch, name="shutdown-watcher", daemon=True)
        with on_stop(self.request):
            watcher.start()
            try:
                yield
            finally:
                self._exited.set()
                self.event.set()  # releases the watcher thread

    def announced(self) -> None:
        """Wait (briefly) until the watcher logged the signal: it comes first in the log."""
        if self.requested:
            self._announced.wait(1.0)

    def _watch(self) -> None:
        self.event.wait()
        if self._exited.is_set():
            return
        self.log.info("received_shutdown_signal", signal=self.signal)
        self._announced.set()
        if not self._exited.wait(self.grace_s):
            self.log.error("shutdown_grace_exceeded", grace_seconds=self.grace_s)
            os._exit(FORCED_EXIT_CODE)
