"""Runtime jobs: created, edited and deleted through the API and the CLI, each a handler of
the catalogue (WORKER_HANDLERS) with its kwargs (ARCHITECTURE.md, "Runtime jobs").

A definition is checked whole before it is stored (`parse`, DefinitionError naming the
field or parameter), runs as a `python` job of the handler in a child interpreter
(`spec`), and can never carry a command line, SQL text or URL.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import db, schedules
from ..handlers import Catalogue, KwargsError, load_catalogue
from ..jobfile import Declared, PythonCall
from ..registry import JobSpec
from ..schedules import Policy, Schedule, ScheduleError
from ..settings import Settings
from ..store import definitions, ledger
from . import declared
from .base import JobContext

NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
FIELDS = ("name", "handler", "kwargs", "schedule", "at", "timezone", "timeout", "max_attempts")
FIELDS_ALL = (*FIELDS, "description")
DEFAULT_TIMEOUT_S = 3600
MAX_TIMEOUT_S = 7 * 86400
MAX_ATTEMPTS = 10
MAX_DESCRIPTION = 500


class DefinitionError(ValueError):
    """A definition that cannot be stored: `field` names the field, or the parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Definition:
    """What `worker_jobs.definition` holds for a runtime job."""

    handler: str
    kwargs: dict[str, Any]
    schedule: str  # the canonical text: `cron ... ZONE`, `every 1h`, `manual`, `at ...Z`
    timezone: str = "UTC"
    timeout_s: int = DEFAULT_TIMEOUT_S
    max_attempts: int = 3
    description: str | None = None

    def stored(self) -> dict[str, Any]:
        return {
            "handler": self.handler,
            "kwargs": self.kwargs,
            "schedule": self.schedule,
            "timezone": self.timezone,
            "timeout": self.timeout_s,
            "max_attempts": self.max_attempts,
            "description": self.description,
        }

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> Definition:
        return cls(
            handler=str(stored["handler"]),
            kwargs=dict(stored.get("kwargs") or {}),
            schedule=str(stored["schedule"]),
            timezone=str(stored.get("timezone") or "UTC"),
            timeout_s=int(stored.get("timeout") or DEFAULT_TIMEOUT_S),
            max_attempts=int(stored.get("max_attempts") or 3),
            description=stored.get("description"),
        )

    def parsed_schedule(self) -> Schedule:
        return schedules.parse(self.schedule, self.timezone)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise DefinitionError("name", "lower-case letters, digits and _, starting with a letter")
    return name


def parse(body: Any, catalogue: Catalogue, existing: Definition | None = None) -> Definition:
    """A definition from a JSON body: a whole one (create), or the fields to change of
    `existing` (update). `schedule` (cron text, `every N…`, `manual`) and `at` (ISO 8601
    with an offset) are exclusive; the kwargs are checked against the handler."""
    if not isinstance(body, dict):
        raise DefinitionError("body", "a JSON object")
    unknown = sorted(set(body) - set(FIELDS_ALL))
    if unknown:
        raise DefinitionError(unknown[0], f"not a field of a job (fields: {', '.join(FIELDS_ALL)})")
    base = existing or Definition("", {}, "")
    handler = _text(body, "handler", base.handler)
    if not handler:
        raise DefinitionError("handler", "required: a name `GET /api/handlers` lists")
    timezone = _timezone(body.get("timezone", base.timezone))
    definition = replace(
        base,
        handler=handler,
        kwargs=body.get("kwargs", base.kwargs if handler == base.handler else {}),
        schedule=_schedule(body, timezone, base if existing else None),
        timezone=timezone,
        timeout_s=_whole(body, "timeout", base.timeout_s, 1, MAX_TIMEOUT_S),
        max_attempts=_whole(body, "max_attempts", base.max_attempts, 1, MAX_ATTEMPTS),
        description=_description(body.get("description", base.description)),
    )
    try:
        kwargs = catalogue.validate(definition.handler, definition.kwargs)
    except KwargsError as exc:
        raise DefinitionError(exc.parameter, exc.message) from None
    return replace(definition, kwargs=kwargs)


def _text(body: dict[str, Any], field: str, default: str) -> str:
    value = body.get(field, default)
    if not isinstance(value, str):
        raise DefinitionError(field, "must be text")
    return value.strip()


def _timezone(value: Any) -> str:
    if not isinstance(value, str):
        raise DefinitionError("timezone", "an IANA time zone, e.g. UTC or Asia/Shanghai")
    try:
        return schedules.check_timezone(value)
    except ScheduleError as exc:
        raise DefinitionError("timezone", str(exc)) from None


def _schedule(body: dict[str, Any], timezone: str, existing: Definition | None) -> str:
    if "schedule" in body and "at" in body:
        raise DefinitionError("schedule", "give `schedule` or `at`, not both")
    if "schedule" not in body and "at" not in body:
        if existing is None:
            raise DefinitionError("schedule", "required: cron text, `every N…`, `manual`, or `at`")
        # The zone may have changed: a cron schedule is read again in it.
        text = existing.schedule
        if text.startswith("cron "):
            text = " ".join(text.split()[1:6])
        return _parsed(text, timezone, "schedule")
    if "at" in body:
        at = body["at"]
        if not isinstance(at, str):
            raise DefinitionError("at", "ISO 8601 text, e.g. 2026-12-24T02:00:00+08:00")
        return _parsed(f"at {at}", timezone, "at")
    text = body["schedule"]
    if not isinstance(text, str) or text.strip().startswith("at "):
        raise DefinitionError("schedule", "cron text, `every N…` or `manual` (one-shot: `at`)")
    return _parsed(text, timezone, "schedule")


def _parsed(text: str, timezone: str, field: str) -> str:
    try:
        return schedules.parse(text, timezone).text
    except ScheduleError as exc:
        raise DefinitionError(field, str(exc)) from None


def _whole(body: dict[str, Any], field: str, default: int, low: int, high: int) -> int:
    value = body.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DefinitionError(field, f"a whole number from {low} to {high}")
    return value


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise DefinitionError("description", f"text of at most {MAX_DESCRIPTION} characters")
    return value.strip() or None


def save(
    conn: db.Conn, job: str, definition: Definition, actor: str, *, create: bool
) -> datetime | None:
    """Write a checked definition, a new job's (`create`) or a change of one, with its
    change record: the first due time it was given, or None when nothing was written (the
    name taken, the job gone). The API and the CLI both write through here."""
    schedule = definition.parsed_schedule()
    written = definitions.Written(
        schedule=schedule.text,
        first_due=schedule.first_due(db.now(conn)),
        max_attempts=definition.max_attempts,
        period_s=schedule.period_s,
        definition=definition.stored(),
    )
    write = definitions.create if create else definitions.update
    return written.first_due if write(conn, job, written, actor) else None


def set_paused(conn: db.Conn, job: str, paused: bool, actor: str) -> ledger.PauseChange:
    """Pause or resume any job's ledger row, with its change record when the flag changed
    (a second pause records nothing). The API, the dashboard and the CLI all pause here."""
    change = ledger.set_paused(conn, job, paused)
    if change.changed:
        action = "pause" if paused else "resume"
        definitions.record_change(conn, job, action, actor, after={"paused": paused})
    return change


class Handlers:
    """The catalogue of WORKER_HANDLERS, read once, on first use (a process that never
    runs or edits a runtime job never starts the child that reads it)."""

    def __init__(self, settings: Settings, cwd: Path | None = None) -> None:
        self._entries = settings.handlers
        self._cwd = cwd or Path.cwd()
        self._lock = threading.Lock()
        self._catalogue: Catalogue | None = None

    def catalogue(self) -> Catalogue:
        with self._lock:
            if self._catalogue is None:
                self._catalogue = (
                    load_catalogue(list(self._entries), self._cwd) if self._entries else Catalogue()
                )
            return self._catalogue


def spec(job: str, stored: Mapping[str, Any], handlers: Handlers) -> JobSpec:
    """The JobSpec of a runtime job's ledger row (`definition`)."""
    definition = Definition.from_stored(stored)
    return JobSpec(
        job,
        "jobs",
        runner(job, definition, handlers),
        lambda s: definition.parsed_schedule(),
        kind="runtime",
        policy=Policy(max_attempts=definition.max_attempts),
        source="runtime",
    )


def runner(job: str, definition: Definition, handlers: Handlers) -> Callable[[JobContext], None]:
    """One run: the handler in a child interpreter, with the run's kwargs (its claim's:
    the definition's, or a one-off run's own) checked again and their date forms resolved
    at the database's time."""

    def run_handler(ctx: JobContext) -> None:
        catalogue = handlers.catalogue()
        raw = definition.kwargs if ctx.kwargs is None else ctx.kwargs
        try:
            kwargs = catalogue.resolve(
                definition.handler, raw, db.now(ctx.conn), definition.timezone
            )
        except KwargsError as exc:
            ctx.result.error = f"{exc.parameter}: {exc.message}"
            ctx.result.fail(job, ctx.result.error)
            return
        handler = catalogue.get(definition.handler)
        assert handler is not None  # resolve refused an unknown one
        call = PythonCall(handler.target, kwargs, handler=True)
        declared.run(ctx, Declared(job, call, definition.schedule, timeout_s=definition.timeout_s))

    return run_handler
