"""What the log lines say: the fields users query are never overwritten by structlog's own."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker import alerts, db, logs


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """The product's log configuration, rendering into a buffer; restored afterwards."""
    stream = io.StringIO()
    logs.configure("DEBUG", "json", stream=stream)
    yield stream
    structlog.reset_defaults()


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_alert_raised_keeps_the_alert_level_apart_from_the_line_level(
    conn: db.Conn, log_lines: io.StringIO
) -> None:
    alerts.raise_alert(
        conn, type="JOB_FAILED", level="ERROR", job="quota", message="m", log=logs.get_logger()
    )

    [line] = [e for e in parsed(log_lines) if e["event"] == "alert_raised"]
    assert line["alert_level"] == "ERROR"
    assert line["level"] == "warning"
    assert line["type"] == "JOB_FAILED"
