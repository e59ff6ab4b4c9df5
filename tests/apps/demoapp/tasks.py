"""Functions a jobs file names as `python = "demoapp.tasks:NAME"`, written as an app would."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("demoapp.tasks")


async def summarize(limit: int, label: str) -> dict[str, Any]:
    """An `async def` with keyword arguments that prints, logs and returns a dict."""
    print(f"summarizing {label} up to {limit}")
    await asyncio.sleep(0)
    log.info("summary ready for %s", label)
    return {"label": label, "limit": limit, "items": list(range(min(limit, 3)))}


def explode(reason: str) -> None:
    """A job that fails the way app code does: it raises."""
    print("about to check the input")
    raise ValueError(f"bad input: {reason}")


def nothing() -> None:
    """A job that does nothing (the benchmark's python job)."""


def report_pid_then_hang() -> None:
    """Print progress without flushing, as app code does, then hang past any timeout."""
    print(f"started in pid {os.getpid()}")
    print("working on batch 1", file=sys.stderr)
    time.sleep(60)


def reject_token() -> None:
    """App code that puts a secret in its message: the worker must mask it."""
    token = os.environ["ETL_TOKEN"]
    print(f"calling the API with token {token}")
    raise PermissionError(f"token {token} was rejected")


def current_config() -> dict[str, Any]:
    """Returns settings that include a secret from the environment."""
    return {"region": "eu", "api_token": os.environ.get("ETL_TOKEN")}


def binary_noise() -> dict[str, Any]:
    """Prints and returns a NUL character, as code reading a binary file may."""
    print("header\x00trailer")
    return {"raw": "a\x00b", "keys": {"x\x00": 1}}


def fail_with_binary_noise() -> None:
    """Raises with a NUL character in its message."""
    raise ValueError("unexpected byte \x00 in the input")


def ratio_of_nothing() -> dict[str, Any]:
    """Returns floats JSON has no number for, as arithmetic on empty data does."""
    return {"ratio": float("nan"), "ceiling": float("inf"), "floor": -float("inf")}
