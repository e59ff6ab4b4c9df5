"""The WSGI application: every route once (ROUTES), the access rules (`access.py`), then
one handler per route: the pages, the JSON API and the actions. Escaping and the access
rules are in ARCHITECTURE.md, "The HTTP endpoint"."""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
)
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .. import db, schedules, status
from ..describe import describe
from ..jobs import runtime
from ..metrics import LedgerCollector
from ..settings import Settings
from ..store import alerts as alert_store
from ..store import processes, reads
from . import charts, sparklines
from .access import Access
from .cache import FreshCache
from .connections import Connections, DatabaseCheck
from .history import History, page_limit
from .manage import Manage
from .responses import json_response, jsonable

DB_CHECK_TIMEOUT_S = 2.0
RECENT_RUNS = 20
# The dashboard's data is read at most this often, however many browsers poll it: a page
# that refreshes itself, open in twenty tabs, must not cost the jobs their database. Any
# action taken through this endpoint clears it at once.
DASHBOARD_FRESH_S = 1.0
JOB_RUNS = 50
DASHBOARD_JOBS = 100  # jobs per page of the dashboard's list
ALERTS = 50
NOTICES = {  # `?done=` after a form action -> the message shown; the subject is escaped
    "paused": "Paused {}.",
    "resumed": "Resumed {}.",
    "requested": "Run of {} requested: the running service starts it within 5 s.",
    "acknowledged": "Alert {} acknowledged.",
    "created": "Created {}.",
    "updated": "Saved {}.",
    "deleted": "Deleted {}.",
    "cancelling": "Run {} asked to stop: it ends within a few seconds.",
    "acknowledged_all": "{} open alerts acknowledged.",
}

# Every route, once: its rule, the App method that answers it, its HTTP method.
ROUTES = (
    ("/healthz", "healthz", "GET"),
    ("/metrics", "metrics", "GET"),
    ("/", "dashboard", "GET"),
    ("/jobs/<job>", "job_page", "GET"),
    ("/runs/<int:run_id>", "run_page", "GET"),
    ("/api/jobs", "api_jobs", "GET"),
    ("/api/jobs/<job>", "api_job", "GET"),
    ("/api/jobs/<job>/runs", "api_job_runs", "GET"),
    ("/api/runs/<int:run_id>", "api_run", "GET"),
    ("/api/alerts", "history.api_alerts", "GET"),
    ("/api/processes", "api_processes", "GET"),
    ("/api/jobs/<job>/pause", "pause", "POST"),
    ("/api/jobs/<job>/resume", "resume", "POST"),
    ("/api/jobs/<job>/run", "manage.request_run", "POST"),
    ("/api/jobs", "manage.create", "POST"),
    ("/api/jobs/<job>", "manage.update", "PATCH"),
    ("/api/jobs/<job>", "manage.delete", "DELETE"),
    ("/api/jobs/<job>/changes", "manage.changes", "GET"),
    ("/api/handlers", "manage.handler_list", "GET"),
    ("/api/runs/<int:run_id>/cancel", "manage.cancel", "POST"),
    ("/new-job", "manage.new_page", "GET"),
    ("/jobs/<job>/edit", "manage.edit_page", "GET"),
    ("/jobs/<job>/edit", "manage.update", "POST"),  # a form cannot send PATCH
    ("/jobs/<job>/delete", "manage.delete_page", "GET"),
    ("/jobs/<job>/delete", "manage.delete", "POST"),  # nor DELETE
    ("/api/alerts/<int:alert_id>/ack", "ack", "POST"),
    ("/runs", "history.runs_page", "GET"),
    ("/api/runs", "history.api_runs", "GET"),
    ("/alerts", "history.alerts_page", "GET"),
    ("/api/alerts/ack", "history.ack_all", "POST"),
)
URLS = Map([Rule(path, endpoint=handler, methods=[verb]) for path, handler, verb in ROUTES])

DashboardData = tuple[
    status.Report, list[dict[str, Any]], list[dict[str, Any]], dict[str, sparklines.Sparkline]
]


class App:
    """The WSGI application: routing, access rules, then one handler per route."""

    def __init__(
        self,
        settings: Settings,
        stalled: Callable[[], str | None],
        log: Any,
        connections: Connections,
        database_check: DatabaseCheck,
        on_request: Callable[[], None] | None = None,
        handlers: runtime.Handlers | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.stalled = stalled
        self.on_request = on_request
        self.connections = connections
        self.database_check = database_check
        self.access = Access(settings.http_token, settings.http_host)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LedgerCollector(self.connections.connection))
        self._templates: Any = None  # loaded on the first page view
        self._templates_lock = threading.Lock()
        self.dashboard_cache: FreshCache[DashboardData] = FreshCache(DASHBOARD_FRESH_S)
        self.history = History(self)
        self.manage = Manage(self, handlers or runtime.Handlers(settings))

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def handler(self, endpoint: str) -> Callable[..., Response]:
        """The method a route names: `dashboard` on the App, `manage.create` on its Manage."""
        owner: Any = self
        for part in endpoint.split("."):
            owner = getattr(owner, part)
        return owner  # type: ignore[no-any-return]

    def dispatch(self, request: Request) -> Response:
        try:
            endpoint, args = URLS.bind_to_environ(request.environ).match()
            if endpoint != "healthz":
                self.access.check(request)
            handler: Callable[..., Response] = self.handler(str(endpoint))
            return handler(request, **args)
        except HTTPException as exc:
            return self.error(request, exc)
        except psycopg.Error as exc:
            reason = f"database unavailable: {db.describe_error(exc)}"
            self.log.warning("http_database_error", path=request.path, error=reason)
            return self.error(request, ServiceUnavailable(reason))
        except Exception:  # a bug in a handler: answer 500, keep serving, say where
            self.log.exception("http_handler_failed", path=request.path)
            return self.error(request, InternalServerError())

    # --- errors and helpers ------------------------------------------------------------

    def error(self, request: Request, exc: HTTPException) -> Response:
        """JSON under /api/ and for /healthz, else werkzeug's (escaped) HTML page; also for a
        dashboard form posted to the API (it says where to go back to: `next`)."""
        from_form = request.method == "POST" and "next" in request.form
        if from_form or not (request.path.startswith("/api/") or request.path == "/healthz"):
            return exc.get_response(request.environ)
        code = exc.code or 500
        response = json_response({"error": exc.description, "status": code}, code)
        for name, value in exc.get_headers(request.environ):
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    def templates(self) -> Any:
        """The Jinja2 environment (autoescaping), imported on the first page view: a process
        whose endpoint only answers /healthz and /metrics never pays its memory."""
        with self._templates_lock:
            if self._templates is None:
                from jinja2 import Environment, PackageLoader

                environment = Environment(
                    loader=PackageLoader("worker", "templates"), autoescape=True
                )
                environment.filters.update(
                    utc=_utc, local=_local, duration=status.duration, ago=charts.short_duration
                )
                self._templates = environment
            return self._templates

    def render(self, template: str, **context: Any) -> Response:
        nonce = secrets.token_urlsafe(16)  # only the page's own script may run
        html = self.templates().get_template(template).render(nonce=nonce, **context)
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": _CSP.format(nonce=nonce)}
        return Response(html, mimetype="text/html", headers=headers)

    def report(
        self, conn: db.Conn, *, after: str | None = None, limit: int | None = None
    ) -> status.Report:
        report = status.gather(conn, after=after, limit=limit)
        return replace(report, concurrency=self.settings.concurrency)

    def job_status(self, conn: db.Conn, job: str) -> status.JobStatus:
        found = status.gather(conn, job=job).jobs  # one job's row, not every job's
        if not found:
            raise NotFound(f"no job {job!r} in the ledger")
        return found[0]

    def zone(self, entry: status.JobStatus) -> str:
        schedule = schedules.parse(entry.schedule)
        zone = getattr(schedule, "timezone", None)
        return str(zone) if zone else self.settings.schedule_timezone

    # --- health and metrics ------------------------------------------------------------

    def healthz(self, request: Request) -> Response:
        reason = self.stalled() or self.database_check.error(DB_CHECK_TIMEOUT_S)
        if reason is not None:
            return json_response({"status": "unavailable", "reason": reason}, 503)
        return json_response({"status": "ok", "loop": "alive", "database": "ok"})

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    # --- pages -------------------------------------------------------------------------

    def dashboard(self, request: Request) -> Response:
        after = request.args.get("after")
        if after is None:
            report, runs, alerts, sparks = self.dashboard_data()
        else:  # a later page of the job list: read as asked, not kept
            report, runs, alerts, sparks = self.read_dashboard(_cursor(after))
        zones = {entry.job: self.zone(entry) for entry in report.jobs}
        return self.render(
            "dashboard.html",
            report=report,
            zones=zones,
            runs=runs,
            alerts=alerts,
            sparks=sparks,
            notice=_notice(request),
            here=request.path,
        )

    def dashboard_data(self) -> DashboardData:
        """The jobs, recent runs and open alerts, read again once DASHBOARD_FRESH_S old."""
        return self.dashboard_cache.get(self.read_dashboard)

    def read_dashboard(self, after: str | None = None) -> DashboardData:
        with self.connections.connection() as conn:
            report = self.report(conn, after=after, limit=DASHBOARD_JOBS)
            runs = reads.recent_runs(conn, RECENT_RUNS)
            alerts = alert_store.open_alerts(conn, ALERTS)
            sparks = sparklines.sparklines(conn, [entry.job for entry in report.jobs])
        return report, runs, alerts, sparks

    def job_page(self, request: Request, job: str) -> Response:
        with self.connections.connection() as conn:
            entry = self.job_status(conn, job)
            rows = reads.job_runs(conn, job, JOB_RUNS)
            job_charts = charts.job_charts(conn, job, self.zone(entry))
        definition = entry.definition
        handler = (
            self.manage.handlers.catalogue().get(definition["handler"]) if definition else None
        )
        return self.render(
            "job.html",
            job=entry,
            zone=self.zone(entry),
            runs=rows,
            charts=job_charts,
            handler=handler,
            spec=describe(entry),
            notice=_notice(request),
            here=request.path,
        )

    def run_page(self, request: Request, run_id: int) -> Response:
        run = self.fetch_run(run_id)
        failures = (run["details"] or {}).get("failures", [])
        result = None if run["result"] is None else json.dumps(run["result"], indent=2)
        return self.render(
            "run.html",
            run=run,
            failures=failures,
            result=result,
            elapsed=status.duration(run["elapsed_ms"]),
            refresh_s=2 if run["status"] == "running" else 10,
            notice=_notice(request),
        )

    def fetch_run(self, run_id: int) -> dict[str, Any]:
        with self.connections.connection() as conn:
            run = reads.run(conn, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return run

    # --- JSON API ----------------------------------------------------------------------

    def api_jobs(self, request: Request) -> Response:
        """Every job; with `limit` (and `after`, the `next` of the previous page) a page."""
        paged = "limit" in request.args or "after" in request.args
        limit = page_limit(request.args, DASHBOARD_JOBS) if paged else None
        after = _cursor(request.args.get("after"))
        with self.connections.connection() as conn:
            report = self.report(conn, after=after, limit=limit)
        body = status.report_dict(report)
        if paged:
            body["next"] = report.next_after
        return json_response(body)

    def api_job(self, request: Request, job: str) -> Response:
        with self.connections.connection() as conn:
            entry = self.job_status(conn, job)
        return json_response({**status.job_dict(entry), "spec": describe(entry)})

    def api_job_runs(self, request: Request, job: str) -> Response:
        limit = page_limit(request.args, JOB_RUNS)
        with self.connections.connection() as conn:
            self.job_status(conn, job)
            rows = reads.job_runs(conn, job, limit)
        return json_response({"job": job, "runs": [jsonable(row) for row in rows]})

    def api_run(self, request: Request, run_id: int) -> Response:
        return json_response(jsonable(self.fetch_run(run_id)))

    def api_processes(self, request: Request) -> Response:
        with self.connections.connection() as conn:
            rows = processes.listed(conn)  # the processes alone: no job is read
        return json_response({"processes": [status.process_dict(p) for p in rows]})

    # --- actions -----------------------------------------------------------------------

    def pause(self, request: Request, job: str) -> Response:
        return self.set_paused(request, job, paused=True)

    def resume(self, request: Request, job: str) -> Response:
        return self.set_paused(request, job, paused=False)

    def set_paused(self, request: Request, job: str, *, paused: bool) -> Response:
        with self.connections.connection() as conn:
            self.job_status(conn, job)
            runtime.set_paused(conn, job, paused, self.manage.actor)
        self.log.info("job_paused_set" if paused else "job_resumed", job=job, via="http")
        done = "paused" if paused else "resumed"
        return self.acted(request, done, job, {"job": job, "paused": paused})

    def ack(self, request: Request, alert_id: int) -> Response:
        with self.connections.connection() as conn:
            acknowledged_at = alert_store.acknowledge(conn, alert_id)
        if acknowledged_at is None:
            raise NotFound(f"no alert {alert_id}")
        self.log.info("alert_acknowledged", alert_id=alert_id, via="http")
        body = {"id": alert_id, "acknowledged_at": status.iso(acknowledged_at)}
        return self.acted(request, "acknowledged", str(alert_id), body)

    def notice(self, request: Request) -> str | None:
        """The message of a form action's `?done=`, for a page of another module."""
        return _notice(request)

    def acted(
        self, request: Request, done: str, subject: str, body: dict[str, Any], code: int = 200
    ) -> Response:
        """JSON for a script; for the dashboard's forms, back to the page they came from."""
        self.dashboard_cache.clear()  # the page it leads back to shows the change
        back = request.form.get("next")
        if back is None:
            return json_response(body, code)
        if not back.startswith("/") or back.startswith("//"):
            raise BadRequest("next: a path on this server")
        separator = "&" if "?" in back else "?"
        query = urlencode({"done": done, "subject": subject})
        return Response(status=303, headers={"Location": f"{back}{separator}{query}"})


_CSP = (
    "default-src 'self'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _notice(request: Request) -> str | None:
    template = NOTICES.get(request.args.get("done", ""))
    return None if template is None else template.format(request.args.get("subject", ""))


def _cursor(after: str | None) -> str | None:
    try:
        status.parse_cursor(after)
    except ValueError as exc:
        raise BadRequest(f"after: {exc}") from None
    return after


def _utc(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(ZoneInfo(zone)).strftime(f"%Y-%m-%d %H:%M:%S {zone}")
