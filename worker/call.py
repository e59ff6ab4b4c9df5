"""`python -m worker.call module:function`: one declared python job, in a child interpreter.

Keyword arguments arrive as a JSON object on stdin. What the function prints or logs goes to
stdout/stderr (the run's `output`); its return value, or its exception's type and message,
is written as JSON to the file named by `WORKER_CALL_RESULT`. Exit 0 on success, 1 if the
function raised.

`python -m worker.call --handler TARGET` runs a catalogue handler (`worker.handlers`):
TARGET may also be a script file (`/app/scripts/sync.py:run`), and the values of its
`datetime`, `date` and `timedelta` parameters arrive as ISO text or seconds and are passed
as those objects (`inspect_handlers.revive`). Without the flag nothing is converted.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    handler = args[:1] == ["--handler"]
    if handler:
        del args[0]
    if len(args) != 1 or ":" not in args[0]:
        print("usage: python -m worker.call [--handler] module:function", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.path.insert(0, os.getcwd())  # the app's code, as `python -m app...` would find it
    kwargs = json.loads(sys.stdin.read() or "{}")
    try:
        value = _call(args[0], kwargs, handler=handler)
    except Exception as exc:
        traceback.print_exc()
        _answer({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _answer({"result": _jsonable(value)})
    return 0


def _call(target: str, kwargs: dict[str, Any], *, handler: bool = False) -> Any:
    if handler:
        from . import task
        from .inspect_handlers import import_target, revive

        task.install()  # a stop ends it, or only flags once it asks task.should_stop()
        function = import_target(target)
        kwargs = revive(function, kwargs)
    else:
        module_name, function_name = target.split(":", 1)
        function = getattr(importlib.import_module(module_name), function_name)
    value = function(**kwargs)
    if inspect.isawaitable(value):
        value = asyncio.run(_awaited(value))
    return value


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        print(
            f"worker.call: the return value ({type(value).__name__}) is not JSON;"
            " the result is left empty",
            file=sys.stderr,
        )
        return None
    return value


def _answer(answer: dict[str, Any]) -> None:
    path = os.environ.get("WORKER_CALL_RESULT")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(answer, out)


if __name__ == "__main__":
    raise SystemExit(main())
