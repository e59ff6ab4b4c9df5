"""The HTTP endpoint: /healthz, /metrics, the dashboard and its JSON API, on threads of its own.

waitress buffers each request whole on its own I/O thread before a handler thread sees it, so
a slow or hostile client holds one socket, never a job or the stop. Access rules, CSRF and
escaping are in ARCHITECTURE.md, "The HTTP endpoint".
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit
from zoneinfo import ZoneInfo

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from waitress import wasyncore
from waitress.server import create_server
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    HTTPException,
    InternalServerError,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from . import db, schedules, status
from .metrics import LedgerCollector
from .settings import Settings
from .store import alerts as alert_store
from .store import ledger, reads

SERVER_THREADS = 4  # handler threads; each keeps at most one database connection
CHANNEL_TIMEOUT_S = 30  # an idle or dribbling connection is closed after this long
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024  # the largest request is a small form
DB_CHECK_TIMEOUT_S = 2.0
CLOSE_WAIT_S = 0.5  # the I/O thread's poll wakes on the trigger at once
CONNECT_TIMEOUT_S = 5
RECENT_RUNS = 20
# The dashboard's data is read at most this often, however many browsers poll it: a page
# that refreshes itself, open in twenty tabs, must not cost the jobs their database. Any
# action taken through this endpoint clears it at once.
DASHBOARD_FRESH_S = 1.0
JOB_RUNS = 50
MAX_RUNS_LIMIT = 500
ALERTS = 50
LOOPBACK_NAMES = ("localhost",)
NOTICES = {  # `?done=` after a form action -> the message shown; the subject is escaped
    "paused": "Paused {}.",
    "resumed": "Resumed {}.",
    "requested": "Run of {} requested: the running service starts it within 5 s.",
    "acknowledged": "Alert {} acknowledged.",
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
    ("/api/alerts", "api_alerts", "GET"),
    ("/api/processes", "api_processes", "GET"),
    ("/api/jobs/<job>/pause", "pause", "POST"),
    ("/api/jobs/<job>/resume", "resume", "POST"),
    ("/api/jobs/<job>/run", "request_run", "POST"),
    ("/api/alerts/<int:alert_id>/ack", "ack", "POST"),
)
URLS = Map([Rule(path, endpoint=handler, methods=[verb]) for path, handler, verb in ROUTES])


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Endpoint:
    """The listener, its I/O thread and its handler threads; `close()` ends them all."""

    def __init__(self, server: Any, sockets: dict[int, Any], app: App) -> None:
        self._server = server
        self._sockets = sockets  # the I/O thread's own map: the listener and every connection
        self.app = app
        self.port = int(server.effective_port)
        self._thread = threading.Thread(target=server.run, name="http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Close the listener and every connection; never waits for a handler in progress.

        The sockets are closed on the I/O thread itself (its map is not thread-safe); with
        its map empty, its loop ends.
        """
        self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._sockets))
        self._server.task_dispatcher.set_thread_count(0)
        self._thread.join(CLOSE_WAIT_S)
        self.app.connections.close()


def serve(
    settings: Settings,
    *,
    stalled: Callable[[], str | None],
    log: Any,
    on_request: Callable[[], None] | None = None,
) -> Endpoint:
    """Listen on WORKER_HTTP_HOST:WORKER_HTTP_PORT; raises OSError when the port is taken.

    `stalled()` tells /healthz why the daemon's loop looks stuck, or None while it is alive;
    `on_request()` tells the loop that a run was requested here, so that it starts at once.
    """
    assert settings.http_port is not None
    app = App(settings, stalled, log, on_request)
    sockets: dict[int, Any] = {}
    server = create_server(
        app,
        map=sockets,
        host=settings.http_host,
        port=settings.http_port,
        threads=SERVER_THREADS,
        channel_timeout=CHANNEL_TIMEOUT_S,
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_BODY_BYTES,
        ident="worker",
        expose_tracebacks=False,
    )
    endpoint = Endpoint(server, sockets, app)
    log.info(
        "http_listening",
        host=settings.http_host,
        port=endpoint.port,
        token=settings.http_token is not None,
        loopback=is_loopback(settings.http_host),
    )
    return endpoint


class Connections:
    """One database connection per handler thread, opened on first use and after it broke."""

    def __init__(self, settings: Settings) -> None:
        self._database = settings.database
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[db.Conn] = []

    @contextmanager
    def connection(self) -> Iterator[db.Conn]:
        conn: db.Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = db.connect(
                self._database, application_name="worker:web", connect_timeout_s=CONNECT_TIMEOUT_S
            )
            self._local.conn = conn
            with self._lock:
                self._open = [c for c in self._open if not c.closed] + [conn]
        try:
            yield conn
        except psycopg.OperationalError:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open = []


class DatabaseCheck:
    """`SELECT 1` on a fresh connection, waited for at most a deadline.

    The probe runs on a thread of its own, so a database that never answers costs one
    waiting thread, never a handler; while one probe hangs, no second one is started.
    """

    def __init__(self, settings: Settings) -> None:
        self._database = settings.database
        self._lock = threading.Lock()
        self._probe: threading.Thread | None = None
        self._done = threading.Event()
        self._error: str | None = None

    def error(self, timeout_s: float) -> str | None:
        """None when the database answered within `timeout_s`; else why it did not."""
        with self._lock:
            if self._probe is None or not self._probe.is_alive():
                self._done = threading.Event()
                self._probe = threading.Thread(target=self._run, args=(self._done,), daemon=True)
                self._probe.start()
            done = self._done
        if not done.wait(timeout_s):
            return f"the database did not answer within {timeout_s:g} s"
        return self._error

    def _run(self, done: threading.Event) -> None:
        try:
            with db.connect(
                self._database, application_name="worker:healthz", connect_timeout_s=2
            ) as conn:
                conn.execute(db.query("db.ping"))
            self._error = None
        except psycopg.Error as exc:
            self._error = f"database unavailable: {db.describe_error(exc)}"
        done.set()


class App:
    """The WSGI application: routing, access rules, then one handler per route."""

    def __init__(
        self,
        settings: Settings,
        stalled: Callable[[], str | None],
        log: Any,
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.log = log
        self.stalled = stalled
        self.on_request = on_request
        self.connections = Connections(settings)
        self.database_check = DatabaseCheck(settings)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LedgerCollector(self.connections.connection))
        self.loopback = is_loopback(settings.http_host)
        self._templates: Any = None  # loaded on the first page view
        self._templates_lock = threading.Lock()
        self._dashboard: tuple[float, DashboardData] | None = None
        self._dashboard_lock = threading.Lock()
        self._actions = 0  # counts actions: data read across one is not kept

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        try:
            endpoint, args = URLS.bind_to_environ(request.environ).match()
            if endpoint != "healthz":
                self.check_access(request)
            handler: Callable[..., Response] = getattr(self, str(endpoint))
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

    # --- access -------------------------------------------------------------------------

    def check_access(self, request: Request) -> None:
        """Raise 401/403 unless the request may go on (ARCHITECTURE.md, "The HTTP endpoint")."""
        token = self.settings.http_token
        if token is None:
            self._check_tokenless(request)
            by_script = False
        else:
            by_script = self._check_token(request, token)
        if request.method == "POST" and not by_script and not _same_origin(request):
            raise Forbidden(
                "a form POST must come from this dashboard: its Origin or Referer must match "
                "the Host (scripts: send Authorization: Bearer <WORKER_HTTP_TOKEN>)"
            )

    def _check_tokenless(self, request: Request) -> None:
        if not self.loopback:
            raise Forbidden(
                "set WORKER_HTTP_TOKEN to use the dashboard, the API and /metrics on a "
                "non-loopback address (WORKER_HTTP_HOST)"
            )
        # A page elsewhere could point its own name at 127.0.0.1 (DNS rebinding): without a
        # token, only loopback names are served.
        if not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
            raise Forbidden("without WORKER_HTTP_TOKEN, use http://localhost or 127.0.0.1")

    def _check_token(self, request: Request, token: str) -> bool:
        """True for a script's Bearer token; False for Basic (a browser sends it by itself)."""
        auth = request.authorization
        supplied = None
        if auth is not None and auth.type == "bearer":
            supplied = auth.token
        elif auth is not None and auth.type == "basic":
            supplied = auth.password
        if supplied is None or not hmac.compare_digest(supplied.encode(), token.encode()):
            raise Unauthorized(
                "WORKER_HTTP_TOKEN is required: Authorization: Bearer <token>, "
                "or HTTP Basic auth with the token as password",
                www_authenticate=_BASIC_CHALLENGE,
            )
        return auth is not None and auth.type == "bearer"

    # --- errors and helpers ------------------------------------------------------------

    def error(self, request: Request, exc: HTTPException) -> Response:
        """JSON under /api/ and for /healthz, else werkzeug's (escaped) HTML page."""
        if not (request.path.startswith("/api/") or request.path == "/healthz"):
            return exc.get_response(request.environ)
        code = exc.code or 500
        response = _json({"error": exc.description, "status": code}, code)
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
                environment.filters.update(utc=_utc, local=_local, duration=status.duration)
                self._templates = environment
            return self._templates

    def render(self, template: str, **context: Any) -> Response:
        nonce = secrets.token_urlsafe(16)  # only the page's own script may run
        html = self.templates().get_template(template).render(nonce=nonce, **context)
        headers = {**_PAGE_HEADERS, "Content-Security-Policy": _CSP.format(nonce=nonce)}
        return Response(html, mimetype="text/html", headers=headers)

    def report(self, conn: db.Conn) -> status.Report:
        return replace(status.gather(conn), concurrency=self.settings.concurrency)

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
            return _json({"status": "unavailable", "reason": reason}, 503)
        return _json({"status": "ok", "loop": "alive", "database": "ok"})

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), content_type=CONTENT_TYPE_LATEST)

    # --- pages -------------------------------------------------------------------------

    def dashboard(self, request: Request) -> Response:
        report, runs, alerts = self.dashboard_data()
        zones = {entry.job: self.zone(entry) for entry in report.jobs}
        return self.render(
            "dashboard.html",
            report=report,
            zones=zones,
            runs=runs,
            alerts=alerts,
            notice=_notice(request),
            here=request.path,
        )

    def dashboard_data(self) -> DashboardData:
        """The jobs, recent runs and open alerts: read again once DASHBOARD_FRESH_S old."""
        with self._dashboard_lock:
            if self._dashboard and time.monotonic() - self._dashboard[0] < DASHBOARD_FRESH_S:
                return self._dashboard[1]
            actions = self._actions
        read_at = time.monotonic()
        with self.connections.connection() as conn:
            report = self.report(conn)
            runs = reads.recent_runs(conn, RECENT_RUNS)
            alerts = alert_store.listed(conn, ALERTS, only_open=True)
        data = (report, runs, alerts)
        with self._dashboard_lock:
            if self._actions == actions:
                self._dashboard = (read_at, data)
        return data

    def job_page(self, request: Request, job: str) -> Response:
        with self.connections.connection() as conn:
            entry = self.job_status(conn, job)
            rows = reads.job_runs(conn, job, JOB_RUNS)
        return self.render(
            "job.html",
            job=entry,
            zone=self.zone(entry),
            runs=rows,
            notice=_notice(request),
            here=request.path,
        )

    def run_page(self, request: Request, run_id: int) -> Response:
        run = self.fetch_run(run_id)
        failures = (run["details"] or {}).get("failures", [])
        result = None if run["result"] is None else json.dumps(run["result"], indent=2)
        return self.render("run.html", run=run, failures=failures, result=result)

    def fetch_run(self, run_id: int) -> dict[str, Any]:
        with self.connections.connection() as conn:
            run = reads.run(conn, run_id)
        if run is None:
            raise NotFound(f"no run {run_id}")
        return run

    # --- JSON API ----------------------------------------------------------------------

    def api_jobs(self, request: Request) -> Response:
        with self.connections.connection() as conn:
            return _json(status.report_dict(self.report(conn)))

    def api_job(self, request: Request, job: str) -> Response:
        with self.connections.connection() as conn:
            return _json(status.job_dict(self.job_status(conn, job)))

    def api_job_runs(self, request: Request, job: str) -> Response:
        limit = _limit(request, default=JOB_RUNS)
        with self.connections.connection() as conn:
            self.job_status(conn, job)
            rows = reads.job_runs(conn, job, limit)
        return _json({"job": job, "runs": [_jsonable(row) for row in rows]})

    def api_run(self, request: Request, run_id: int) -> Response:
        return _json(_jsonable(self.fetch_run(run_id)))

    def api_alerts(self, request: Request) -> Response:
        only_open = request.args.get("open", "0").lower() in ("1", "true", "yes")
        limit = _limit(request, default=ALERTS)
        with self.connections.connection() as conn:
            rows = alert_store.listed(conn, limit, only_open=only_open)
        return _json({"alerts": [_jsonable(row) for row in rows]})

    def api_processes(self, request: Request) -> Response:
        with self.connections.connection() as conn:
            report = self.report(conn)
        return _json({"processes": [status.process_dict(p) for p in report.processes]})

    # --- actions -----------------------------------------------------------------------

    def pause(self, request: Request, job: str) -> Response:
        return self.set_paused(request, job, paused=True)

    def resume(self, request: Request, job: str) -> Response:
        return self.set_paused(request, job, paused=False)

    def set_paused(self, request: Request, job: str, *, paused: bool) -> Response:
        with self.connections.connection() as conn:
            self.job_status(conn, job)
            ledger.set_paused(conn, job, paused)
        self.log.info("job_paused_set" if paused else "job_resumed", job=job, via="http")
        done = "paused" if paused else "resumed"
        return self.acted(request, done, job, {"job": job, "paused": paused})

    def request_run(self, request: Request, job: str) -> Response:
        with self.connections.connection() as conn:
            self.job_status(conn, job)
            ledger.request_run(conn, job)
        self.log.info("run_requested", job=job, via="http")
        if self.on_request is not None:
            self.on_request()  # this process's loop reads the ledger now, not at its poll
        return self.acted(request, "requested", job, {"job": job, "requested": True}, 202)

    def ack(self, request: Request, alert_id: int) -> Response:
        with self.connections.connection() as conn:
            acknowledged_at = alert_store.acknowledge(conn, alert_id)
        if acknowledged_at is None:
            raise NotFound(f"no alert {alert_id}")
        self.log.info("alert_acknowledged", alert_id=alert_id, via="http")
        body = {"id": alert_id, "acknowledged_at": status.iso(acknowledged_at)}
        return self.acted(request, "acknowledged", str(alert_id), body)

    def acted(
        self, request: Request, done: str, subject: str, body: dict[str, Any], code: int = 200
    ) -> Response:
        """JSON for a script; for the dashboard's forms, back to the page they came from."""
        with self._dashboard_lock:
            self._dashboard = None  # the page it leads back to shows the change
            self._actions += 1
        back = request.form.get("next")
        if back is None:
            return _json(body, code)
        if not back.startswith("/") or back.startswith("//"):
            raise BadRequest("next: a path on this server")
        separator = "&" if "?" in back else "?"
        query = urlencode({"done": done, "subject": subject})
        return Response(status=303, headers={"Location": f"{back}{separator}{query}"})


_BASIC_CHALLENGE = WWWAuthenticate("basic", {"realm": "worker", "charset": "UTF-8"})
_CSP = (
    "default-src 'self'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; "
    "frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


DashboardData = tuple[status.Report, list[dict[str, Any]], list[dict[str, Any]]]


def _same_origin(request: Request) -> bool:
    """The POST's Origin (or, lacking one, its Referer) names the host it was sent to."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == request.host.lower()


def _notice(request: Request) -> str | None:
    template = NOTICES.get(request.args.get("done", ""))
    return None if template is None else template.format(request.args.get("subject", ""))


def _limit(request: Request, *, default: int) -> int:
    raw = request.args.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RUNS_LIMIT:
        raise BadRequest(f"limit: a whole number from 1 to {MAX_RUNS_LIMIT}")
    return int(raw)


def _json(body: Any, code: int = 200) -> Response:
    return Response(
        json.dumps(body, indent=2) + "\n",
        status=code,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: status.iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def _utc(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _local(moment: datetime | None, zone: str) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(ZoneInfo(zone)).strftime(f"%Y-%m-%d %H:%M:%S {zone}")
