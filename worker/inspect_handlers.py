"""`python -m worker.inspect_handlers`: the handler catalogue's imports, in a child
interpreter, so that their side effects, memory and errors stay out of the daemon.

stdin: a JSON array of items, `{"kind": "script"|"module"|"function", "target", "name"}`
(`handlers._Item`). stdout: one JSON line per item, in order, listing the handlers it holds
(`name, title, description, parameters, extra_kwargs, error`), signatures rendered as text
and never run. What the imports print goes to stderr. The working directory is put on
`sys.path`, as `worker.call` does when a handler runs.

`import_target` and `revive` are what `python -m worker.call --handler` uses to run one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
import types
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from . import timeforms
from .handlers import SCRIPT_ENTRY_POINT
from .signatures import annotation_kind, render

MODULE_PREFIX = "worker_handler_"  # a script `sync.py` is imported as `worker_handler_sync`


def main() -> None:
    answers = _answer_stream()
    sys.path.insert(0, os.getcwd())  # the app's code, as `python -m app...` would find it
    items = json.loads(sys.stdin.read() or "[]")
    for item in items:
        answers.write(json.dumps(inspect_item(item), allow_nan=False) + "\n")
        answers.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # a thread an import started must not hold the exit


def _answer_stream() -> IO[str]:
    """The real stdout, for answers only; fd 1 (print, C code, children) goes to stderr."""
    answers = os.dup(1)  # not inherited by anything an import starts
    os.dup2(2, 1)
    return os.fdopen(answers, "w", encoding="utf-8")


def inspect_item(item: dict[str, str]) -> list[dict[str, Any]]:
    """The handlers of one item; one with an `error` when it cannot be imported."""
    kind, target, name = item["kind"], item["target"], item["name"]
    try:
        if kind == "script":
            return _script(Path(target), name)
        if kind == "module":
            return _module(target)
        return [_function(target)]
    except (Exception, SystemExit) as exc:
        return [_failed(name, f"{type(exc).__name__}: {exc}")]


def _script(path: Path, name: str) -> list[dict[str, Any]]:
    module = import_path(path)
    function = getattr(module, SCRIPT_ENTRY_POINT, None)
    if function is None:
        return []  # a helper module of the directory, not a handler
    info = getattr(module, "TASK_INFO", None)
    info = info if isinstance(info, dict) else {}
    title = info.get("name") if isinstance(info.get("name"), str) else None
    description = info.get("description") if isinstance(info.get("description"), str) else None
    description = description or _first_line(function) or _first_line(module)
    return [describe(name, function, title or path.stem, description)]


def _module(module_name: str) -> list[dict[str, Any]]:
    module = importlib.import_module(module_name)
    functions = [
        (name, value)
        for name, value in vars(module).items()
        if inspect.isfunction(value)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    ]
    if not functions:
        return [_failed(module_name, f"{module_name} defines no public function")]
    return [
        describe(f"{module_name}:{name}", function, name, _first_line(function))
        for name, function in functions
    ]


def _function(target: str) -> dict[str, Any]:
    module_name, function_name = target.split(":", 1)
    function = getattr(importlib.import_module(module_name), function_name, None)
    if function is None:
        return _failed(target, f"{module_name} has no attribute {function_name}")
    return describe(target, function, function_name, _first_line(function))


def describe(name: str, function: Any, title: str, description: str) -> dict[str, Any]:
    """A handler's entry: its signature read (never called), annotations as text."""
    if not callable(function):
        return _failed(name, f"{type(function).__name__} is not callable")
    try:
        signature = inspect.signature(function, eval_str=False)
    except (TypeError, ValueError) as exc:
        return _failed(name, f"its signature cannot be read: {exc}")
    parameters, extra, error = [], False, None
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_KEYWORD:
            extra = True
        elif parameter.kind is parameter.POSITIONAL_ONLY:
            if parameter.default is parameter.empty:
                error = f"its parameter {parameter.name} is positional-only: no keyword reaches it"
        elif parameter.kind is not parameter.VAR_POSITIONAL:
            parameters.append(
                {
                    "name": parameter.name,
                    "annotation": render(parameter.annotation),
                    "default": _default(parameter.default),
                    "required": parameter.default is parameter.empty,
                }
            )
    entry = {"name": name, "title": title, "description": description, "error": error}
    return {**entry, "parameters": parameters, "extra_kwargs": extra}


def _default(value: Any) -> Any:
    """A default as JSON: date-likes as the forms their parameter takes, else its repr."""
    if value is inspect.Parameter.empty:
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        return int(seconds) if seconds.is_integer() else seconds
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _first_line(thing: Any) -> str:
    doc = inspect.getdoc(thing) or ""
    return next((line.strip() for line in doc.splitlines() if line.strip()), "")


def _failed(name: str, error: str) -> dict[str, Any]:
    return {"name": name, "title": name, "description": "", "parameters": [], "error": error}


# --- running one: `python -m worker.call --handler TARGET` -------------------------------


def import_path(path: Path) -> types.ModuleType:
    """A handler directory's script, imported by its path as `worker_handler_<stem>`."""
    name = f"{MODULE_PREFIX}{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_target(target: str) -> Any:
    """The function a Handler's `target` names: `module:function`, or `/path/x.py:run`."""
    where, function_name = target.rsplit(":", 1)
    if where.endswith(".py"):
        return getattr(import_path(Path(where)), function_name)
    return getattr(importlib.import_module(where), function_name)


def revive(function: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` with each value of a `datetime`, `date` or `timedelta` parameter turned
    from what `Catalogue.resolve` sent (ISO text, seconds) into the object."""
    try:
        signature = inspect.signature(function, eval_str=False)
    except (TypeError, ValueError):
        return dict(kwargs)
    revived = dict(kwargs)
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        kind = annotation_kind(render(parameter.annotation)).date_like
        if kind is None or revived.get(name) is None:
            continue
        try:
            revived[name] = timeforms.revive(kind, revived[name])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    return revived


if __name__ == "__main__":
    main()
