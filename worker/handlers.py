"""The handler catalogue: the Python functions the app ships that runtime jobs may run
(`WORKER_HANDLERS`; ARCHITECTURE.md, "Runtime jobs"), and the rules their keyword
arguments follow.

The daemon never imports a handler: `load_catalogue` has a child interpreter
(`python -m worker.inspect_handlers`) import them and report each one's signature as text,
and the kwargs are checked against that text with a small grammar (`annotation_kind`),
never evaluated. A handler that fails to import, hangs or crashes its interpreter is
listed with an `error`; the others still list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import IO, Any, Final

from . import timeforms
from .signatures import ANY, Kind, annotation_kind

# An entry of WORKER_HANDLERS that is not a directory: `module` or `module:function`.
MODULE_ENTRY = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?$")
SCRIPTS = "scripts"  # a directory's `sync.py` is the handler `scripts:sync`
SCRIPT_ENTRY_POINT = "run"
INSPECT_TIMEOUT_S = 10.0  # per item: one script, one module or one function
ERROR_TAIL_BYTES = 2048  # of the child's stderr, to say why it died
KILL_WAIT_S = 1.0  # how long a child that closed its output may take to exit


class KwargsError(ValueError):
    """Kwargs a handler does not take (a 400): `parameter` names the culprit (`handler`
    when the handler itself is unknown or broken, `kwargs` when they are not an object)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


# --- the catalogue -----------------------------------------------------------------------


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Final[Any] = _NoDefault()  # a parameter without a default: required


@dataclass(frozen=True)
class Parameter:
    """One keyword parameter of a handler, as its signature writes it."""

    name: str
    annotation: str | None  # the text: `int`, `datetime | None`; None when not annotated
    default: Any = NO_DEFAULT  # a JSON value (a non-JSON default as its repr text)
    kind: Kind = ANY  # annotation_kind(annotation)

    @property
    def required(self) -> bool:
        return self.default is NO_DEFAULT

    def listed(self) -> dict[str, Any]:
        default = None if self.required else self.default
        return {
            "name": self.name,
            "annotation": self.annotation,
            "default": default,
            "required": self.required,
        }


@dataclass(frozen=True)
class Handler:
    """A function runtime jobs may run: `scripts:<stem>` (a handler directory's script,
    entry point `run`) or `module:function`."""

    name: str
    title: str
    description: str = ""
    parameters: tuple[Parameter, ...] = ()
    error: str | None = None  # why it cannot run (an import error...); None when it can
    extra_kwargs: bool = False  # it takes `**kwargs`: names beyond `parameters` are accepted
    module: str | None = None  # where it lives: an importable module...
    path: Path | None = None  # ...or a script file of a handler directory
    function: str = SCRIPT_ENTRY_POINT

    @property
    def target(self) -> str:
        """What `python -m worker.call --handler TARGET` runs: `app.tasks:sync_all`, or
        `/srv/app/scripts/sync.py:run`."""
        if self.path is not None:
            return f"{self.path}:{self.function}"
        return f"{self.module}:{self.function}" if self.module and self.function else ""

    def listed(self) -> dict[str, Any]:
        """The handler as `GET /api/handlers` lists it."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "parameters": [parameter.listed() for parameter in self.parameters],
            "extra_kwargs": self.extra_kwargs,
            "error": self.error,
        }


class Catalogue:
    """The handlers of WORKER_HANDLERS, by name, in the order the entries list them.

    Two handlers of one name in different places (a `sync.py` in two directories) make
    that name an error: which one runs would depend on the order of the entries.
    """

    def __init__(self, handlers: Iterable[Handler] = ()) -> None:
        self._handlers: dict[str, Handler] = {}
        for handler in handlers:
            first = self._handlers.setdefault(handler.name, handler)
            if first.target != handler.target and first.error is None:
                error = f"defined twice, by {first.target} and {handler.target}: rename one"
                self._handlers[handler.name] = _replace_error(first, error)

    def __iter__(self) -> Iterator[Handler]:
        return iter(self._handlers.values())

    def __len__(self) -> int:
        return len(self._handlers)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def listed(self) -> list[dict[str, Any]]:
        """The `GET /api/handlers` answer."""
        return [handler.listed() for handler in self]

    def validate(self, name: str, kwargs: Any) -> dict[str, Any]:
        """`kwargs` as stored, checked against the handler's signature: KwargsError for an
        unknown or broken handler, an unknown name, a missing required parameter, or a value
        that does not fit its annotation. Relative date forms stay text (see `resolve`)."""
        handler = self._runnable(name)
        if not isinstance(kwargs, dict):
            raise KwargsError("kwargs", f"must be a JSON object, got {timeforms.json_type(kwargs)}")
        parameters = {parameter.name: parameter for parameter in handler.parameters}
        for key in kwargs:
            if key not in parameters and not handler.extra_kwargs:
                raise KwargsError(key, f"{handler.name} has no parameter {key!r}")
        for parameter in handler.parameters:
            if parameter.required and parameter.name not in kwargs:
                raise KwargsError(parameter.name, f"is required by {handler.name}")
        for key, value in kwargs.items():
            given = parameters.get(key)
            problem = given.kind.problem(value) if given is not None else None
            if given is not None and problem is not None:
                raise KwargsError(key, f"expected {_expected(given)}, {problem}")
        return dict(kwargs)

    def resolve(
        self, name: str, kwargs: Any, now: datetime, zone: str | tzinfo = "UTC"
    ) -> dict[str, Any]:
        """What the child receives at run time: `kwargs` validated, each date-like value
        evaluated at `now` (the database's clock) as ISO text, a timedelta as seconds."""
        checked = self.validate(name, kwargs)
        handler = self._runnable(name)
        for parameter in handler.parameters:
            kind = parameter.kind.date_like
            value = checked.get(parameter.name)
            if kind is None or value is None:
                continue
            try:
                checked[parameter.name] = timeforms.resolve(kind, value, now, zone)
            except ValueError as exc:
                raise KwargsError(parameter.name, str(exc)) from None
        return checked

    def _runnable(self, name: str) -> Handler:
        handler = self._handlers.get(name)
        if handler is None:
            raise KwargsError("handler", f"no handler named {name!r}")
        if handler.error is not None:
            raise KwargsError("handler", f"{name} cannot run: {handler.error}")
        return handler


def _expected(parameter: Parameter) -> str:
    forms = {"datetime": " (ISO text, now, today, now-7d...)", "timedelta": " (seconds, 30m...)"}
    date_like = parameter.kind.date_like or ""
    return f"{parameter.annotation}{forms.get(date_like, '')}"


def _replace_error(handler: Handler, error: str) -> Handler:
    return dataclasses.replace(handler, error=error)


# --- reading it: a child interpreter -----------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One thing the child imports: a script file, a module, or one module's function."""

    kind: str  # script | module | function
    target: str  # the file's absolute path, `module` or `module:function`
    name: str  # the handler's name if it fails: `scripts:sync`, `app.tasks`...

    def failed(self, error: str) -> Handler:
        return _located(self, {"name": self.name, "title": self.name, "error": error})


def split_entries(spec: str) -> list[str]:
    """WORKER_HANDLERS's comma-separated entries, stripped, empty ones and repeats left out."""
    return list(dict.fromkeys(part.strip() for part in spec.split(",") if part.strip()))


def load_catalogue(
    spec: str | Sequence[str], cwd: Path, timeout_s: float = INSPECT_TIMEOUT_S
) -> Catalogue:
    """The handlers of `spec` (WORKER_HANDLERS's text, or its entries), imported by a child
    interpreter started in `cwd` (the app's directory, put on its `sys.path`). Never raises
    for what the app's code does: an import that fails, hangs past `timeout_s` or kills the
    child is an error on its handler, and the child goes on with the rest."""
    entries = split_entries(spec) if isinstance(spec, str) else split_entries(",".join(spec))
    items: list[_Item] = []
    invalid: list[Handler] = []
    for entry in entries:
        folder = cwd / entry
        if folder.is_dir():
            items += [
                _Item("script", str(path), f"{SCRIPTS}:{path.stem}") for path in _scripts(folder)
            ]
        elif MODULE_ENTRY.match(entry):
            items.append(_Item("function" if ":" in entry else "module", entry, entry))
        else:
            invalid.append(Handler(entry, entry, error="neither a directory nor a module name"))
    return Catalogue([*_inspect_all(items, cwd, timeout_s), *invalid])


def _scripts(folder: Path) -> list[Path]:
    scripts = (path.resolve() for path in folder.glob("*.py") if not path.name.startswith("_"))
    return sorted(path for path in scripts if path.is_file())


def _inspect_all(items: list[_Item], cwd: Path, timeout_s: float) -> list[Handler]:
    """Every item's handlers; a child stuck on one item is replaced for the items after it."""
    found: list[Handler] = []
    start = 0
    while start < len(items):
        done, stuck = _inspect_some(items[start:], cwd, timeout_s)
        found += done
        if stuck is None:
            break
        index, why = stuck
        found.append(items[start + index].failed(why))
        start += index + 1
    return found


def _inspect_some(
    items: list[_Item], cwd: Path, timeout_s: float
) -> tuple[list[Handler], tuple[int, str] | None]:
    """One child on `items`: the handlers of those it finished, and the item it did not
    finish with why (None when it finished them all)."""
    request = json.dumps([item.__dict__ for item in items]).encode()
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "worker.inspect_handlers"],
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,  # its own group: whatever an import starts dies too
            )
        except OSError as exc:
            return [], (0, f"cannot start {sys.executable}: {exc.strerror}")
        try:
            with contextlib.suppress(BrokenPipeError):
                assert child.stdin is not None
                child.stdin.write(request)
                child.stdin.close()
            return _answers(child, items, timeout_s, errors)
        finally:
            _end(child)


def _answers(
    child: subprocess.Popen[bytes], items: list[_Item], timeout_s: float, errors: IO[bytes]
) -> tuple[list[Handler], tuple[int, str] | None]:
    """Read one line per item, each within `timeout_s` of the one before."""
    assert child.stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=_pump, args=(child.stdout, lines), daemon=True).start()
    found: list[Handler] = []
    for index, item in enumerate(items):
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            return found, (index, f"timed out after {timeout_s:g} s while importing")
        try:
            found += [_located(item, answer) for answer in json.loads(line)]
        except (ValueError, TypeError, KeyError):
            return found, (index, f"{_death(child)} while importing{_tail(errors)}")
    return found, None


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed under it: the reader is done
        for line in iter(stream.readline, b""):
            lines.put(line)
    lines.put(b"")  # end of output: not JSON, so the reader asks why


def _death(child: subprocess.Popen[bytes]) -> str:
    try:
        code = child.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        return "the inspecting interpreter stopped answering"
    return f"the inspecting interpreter exited with code {code}"


def _end(child: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def _tail(errors: IO[bytes]) -> str:
    """The last line the child wrote to stderr, as `: line`, or nothing."""
    errors.seek(0, os.SEEK_END)
    errors.seek(max(errors.tell() - ERROR_TAIL_BYTES, 0))
    lines = errors.read().decode("utf-8", "replace").strip().splitlines()
    return f": {lines[-1].strip()}" if lines else ""


def _located(item: _Item, answer: dict[str, Any]) -> Handler:
    """A Handler from what the child answered, placed where the parent knows it lives."""
    name = str(answer["name"])
    if item.kind == "script":
        where: dict[str, Any] = {"path": Path(item.target)}
    else:
        module, _, function = name.partition(":")
        where = {"module": module, "function": function}
    error = answer.get("error")
    return Handler(
        name=name,
        title=str(answer.get("title") or name),
        description=str(answer.get("description") or ""),
        parameters=tuple(_parameter(p) for p in answer.get("parameters", ())),
        error=None if error is None else str(error),
        extra_kwargs=bool(answer.get("extra_kwargs")),
        **where,
    )


def _parameter(answer: dict[str, Any]) -> Parameter:
    annotation = answer.get("annotation")
    annotation = None if annotation is None else str(annotation)
    default = NO_DEFAULT if answer.get("required") else answer.get("default")
    return Parameter(str(answer["name"]), annotation, default, annotation_kind(annotation))
