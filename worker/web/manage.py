"""The API's writes of jobs (ARCHITECTURE.md, "Runtime jobs"): create, edit and delete
runtime jobs, run any job now (a runtime job with other parameters), cancel a run, and
the handler catalogue and change history they are made from.

Built-in and jobs-file jobs may be paused, resumed and run, never edited or deleted here
(403 naming where they are declared). Every change is recorded with its actor.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import BadRequest, Conflict, Forbidden, NotFound
from werkzeug.wrappers import Request, Response

from .. import db, registry, schedules, status
from ..handlers import KwargsError
from ..jobs import runtime
from ..jobs.runtime import Definition, DefinitionError
from ..store import definitions, ledger, processes
from .responses import json_response, jsonable

if TYPE_CHECKING:
    from .app import App

CHANGES = 50


class Manage:
    """The write routes of `app.ROUTES` named `manage.*`, on the App's connections."""

    def __init__(self, app: App, handlers: runtime.Handlers) -> None:
        self.app = app
        self.handlers = handlers

    @property
    def actor(self) -> str:
        """Who made a change: `token` (the dashboard's token) or `loopback`."""
        return "token" if self.app.settings.http_token is not None else "loopback"

    def handler_list(self, request: Request) -> Response:
        return json_response(self.handlers.catalogue().listed())

    def create(self, request: Request) -> Response:
        body = read_body(request)
        name = _checked(lambda: runtime.check_name(body.get("name")))
        if name in registry.JOBS:  # a built-in job, even before its service first started
            raise Conflict(f"a job named {name!r} exists (built in)")
        fields = {key: value for key, value in body.items() if key != "name"}
        definition = _checked(lambda: runtime.parse(fields, self.handlers.catalogue()))
        with self.app.connections.connection() as conn:
            created = runtime.save(conn, name, definition, self.actor, create=True)
        if created is None:
            raise Conflict(f"a job named {name!r} exists")
        self.app.log.info("runtime_job_created", job=name, handler=definition.handler)
        self._wake()
        return self.app.acted(request, "created", name, self.described(name), 201)

    def update(self, request: Request, job: str) -> Response:
        body = read_body(request)
        if "name" in body and body["name"] != job:
            raise BadRequest("name: a job cannot be renamed; create a new one")
        with self.app.connections.connection() as conn:
            current = self._runtime_definition(conn, job, "edited")
            fields = {key: value for key, value in body.items() if key != "name"}
            catalogue = self.handlers.catalogue()
            definition = _checked(lambda: runtime.parse(fields, catalogue, current))
            runtime.save(conn, job, definition, self.actor, create=False)
        self.app.log.info("runtime_job_updated", job=job)
        self._wake()
        return self.app.acted(request, "updated", job, self.described(job))

    def delete(self, request: Request, job: str) -> Response:
        with self.app.connections.connection() as conn:
            self._runtime_definition(conn, job, "deleted")
            definitions.delete(conn, job, self.actor)
        self.app.log.info("runtime_job_deleted", job=job)
        if request.form.get("next") is not None:
            return self.app.acted(request, "deleted", job, {})
        self.app.dashboard_cache.clear()
        return Response(status=204)

    def changes(self, request: Request, job: str) -> Response:
        with self.app.connections.connection() as conn:
            rows = definitions.changes(conn, job, CHANGES)
            if not rows and definitions.source(conn, job) is None:
                raise NotFound(f"no job {job!r}")
        return json_response({"job": job, "changes": [jsonable(row) for row in rows]})

    def request_run(self, request: Request, job: str) -> Response:
        """Run now (202), with other parameters for a runtime job; 409 when no live process
        serves the job's service (the request would wait for ever)."""
        if request.mimetype == "application/json":
            body = read_body(request)
        else:  # a dashboard form: its parameters, if it has any (`run now` has none)
            body = {k: v for k, v in read_body(request).items() if k == "kwargs"}
        with self.app.connections.connection() as conn:
            row = definitions.source(conn, job)
            if row is None:
                raise NotFound(f"no job {job!r} in the ledger")
            kwargs = self._run_kwargs(row, body)
            if row["retired_at"] is not None:  # no live process declares it: none would start it
                raise Conflict(
                    f"{job} is retired: no live process of the {row['service']} service runs "
                    f"it any more (declare it again, or `worker forget {job}`)"
                )
            declared = None if row["source"] == "runtime" else job
            self._check_served(conn, row["service"], declared)
            if not ledger.request_run(conn, job, kwargs):
                raise Conflict(f"a run of {job} is already requested: wait for it to start")
        self.app.log.info("run_requested", job=job, via="http", kwargs=kwargs is not None)
        self._wake()
        body = {"job": job, "requested": True, "kwargs": kwargs}
        return self.app.acted(request, "requested", job, body, 202)

    def cancel(self, request: Request, run_id: int) -> Response:
        with self.app.connections.connection() as conn:
            row = ledger.request_cancel(conn, run_id)
        if row is None:
            raise NotFound(f"no run {run_id}")
        if not row["running"]:
            raise Conflict(f"run {run_id} has ended: there is nothing to cancel")
        self.app.log.info("run_cancel_requested", run_id=run_id, job=row["job"], via="http")
        body = {"id": run_id, "cancel_requested_at": status.iso(row["cancel_requested_at"])}
        return self.app.acted(request, "cancelling", str(run_id), body, 202)

    # --- the dashboard's pages for the same writes ------------------------------------

    def new_page(self, request: Request) -> Response:
        """The handler catalogue; with `?handler=`, the new job's form for that handler."""
        catalogue = self.handlers.catalogue()
        chosen = catalogue.get(request.args.get("handler", ""))
        return self.app.render(
            "job_form.html",
            handlers=list(catalogue),
            handler=chosen,
            job=None,
            definition=None,
            static_page=True,
        )

    def edit_page(self, request: Request, job: str) -> Response:
        with self.app.connections.connection() as conn:
            definition = self._runtime_definition(conn, job, "edited")
        return self.app.render(
            "job_form.html",
            handlers=[],
            handler=self.handlers.catalogue().get(definition.handler),
            job=job,
            definition=definition,
            static_page=True,
        )

    def delete_page(self, request: Request, job: str) -> Response:
        with self.app.connections.connection() as conn:
            self._runtime_definition(conn, job, "deleted")
        return self.app.render("job_delete.html", job=job, static_page=True)

    def _wake(self) -> None:
        """This process's loop reads the ledger now, not at its next poll: a job it runs
        may be due sooner than its next wake-up (other replicas see it within a poll)."""
        if self.app.on_request is not None:
            self.app.on_request()

    def described(self, job: str) -> dict[str, Any]:
        with self.app.connections.connection() as conn:
            return status.job_dict(self.app.job_status(conn, job))

    def _runtime_definition(self, conn: db.Conn, job: str, done: str) -> Definition:
        row = definitions.source(conn, job)
        if row is None:
            raise NotFound(f"no job {job!r} in the ledger")
        if row["source"] != "runtime":
            where = row["declared_in"] or "the worker itself (built in)"
            raise Forbidden(
                f"{job} is declared in {where}: it can be paused, resumed and run here, "
                f"not {done}; change it where it is declared"
            )
        return Definition.from_stored(row["definition"])

    def _run_kwargs(self, row: dict[str, Any], body: dict[str, Any]) -> dict[str, Any] | None:
        unknown = sorted(set(body) - {"kwargs"})
        if unknown:
            raise BadRequest(f"{unknown[0]}: a run takes only `kwargs`")
        if "kwargs" not in body:
            return None
        if row["source"] != "runtime":
            raise BadRequest(f"kwargs: {row['job']} is not a runtime job; it takes none")
        definition = Definition.from_stored(row["definition"])
        validate = self.handlers.catalogue().validate
        checked: dict[str, Any] = _checked(lambda: validate(definition.handler, body["kwargs"]))
        return checked

    def _check_served(self, conn: db.Conn, service: str | None, job: str | None = None) -> None:
        refusal = processes.unserved(conn, service, job)
        if refusal is not None:
            raise Conflict(refusal)


def read_body(request: Request) -> dict[str, Any]:
    """A JSON object body, or a dashboard form's fields (`form_body`); a field whose text
    holds what PostgreSQL cannot store (a NUL character, NaN, Infinity) is refused by name."""
    if request.mimetype != "application/json":
        body = form_body(request)
    else:
        try:
            body = json.loads(request.get_data(as_text=True) or "{}")
        except ValueError as exc:
            raise BadRequest(f"body: not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise BadRequest("body: a JSON object")
    for field, value in body.items():
        if "\x00" in field or db.storable(value) != value:
            raise BadRequest(
                f"{field}: holds a NUL character (\\u0000), NaN or Infinity, "
                "none of which PostgreSQL stores"
            )
    return body


def form_body(request: Request) -> dict[str, Any]:
    """A form's fields as the JSON body would give them: `kw.NAME` a parameter's value as
    JSON (or text where it is not, `today-1d`), `kws.NAME` a text parameter's as written;
    the numbers as numbers. With `with_kwargs` the kwargs are the form's, even if none."""
    form: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    for key, value in request.form.items():
        if key in ("next", "with_kwargs") or value.strip() == "":
            continue
        if key.startswith("kws."):
            kwargs[key.removeprefix("kws.")] = value
        elif key.startswith("kw."):
            kwargs[key.removeprefix("kw.")] = _json_or_text(value)
        else:
            form[key] = (
                int(value) if key in ("timeout", "max_attempts") and value.isdigit() else value
            )
    if kwargs or request.form.get("with_kwargs"):
        form["kwargs"] = kwargs
    return form


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _checked(make: Any) -> Any:
    try:
        return make()
    except DefinitionError as exc:
        raise BadRequest(str(exc)) from None
    except KwargsError as exc:
        raise BadRequest(f"{exc.parameter}: {exc.message}") from None
    except schedules.ScheduleError as exc:
        raise BadRequest(f"schedule: {exc}") from None
