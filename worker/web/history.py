"""The history, searched (ARCHITECTURE.md, "The HTTP endpoint"): `/runs` and `/api/runs`
across jobs, `/alerts` and `/api/alerts`, each filtered and paged by a keyset cursor, and
"acknowledge all".

A filter is a query parameter, the same for the page (a GET form: a filtered view is a URL)
and its JSON. Dates and times without an offset are in SCHEDULE_TIMEZONE; a date alone is
its whole day (`until=2026-12-01` ends at the next midnight).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest
from werkzeug.wrappers import Request, Response

from ..store import alerts as alert_store
from ..store import history
from ..vocab import RunStatus, Trigger
from .responses import json_response, jsonable

if TYPE_CHECKING:
    from .app import App

PAGE = 50  # rows per page, when `limit` does not say
MAX_LIMIT = 500
MAX_TEXT = 200  # a job name or an alert type longer than this is no filter
WEEK = 7  # the runs page's one-click days: today and the 7 before (last Tuesday, any day)
# What a page's links keep of its query: the filters and the page size.
RUN_ARGS = ("job", "status", "trigger", "since", "until", "limit")
ALERT_ARGS = ("type", "job", "open", "since", "until", "limit")
STATUSES = tuple(RunStatus)
TRIGGERS = tuple(Trigger)


class History:
    """The routes of `app.ROUTES` named `history.*`, on the App's connections."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def zone(self) -> str:
        return self.app.settings.schedule_timezone

    # --- runs ------------------------------------------------------------------------

    def runs_page(self, request: Request) -> Response:
        filters = self.run_filters(request.args)
        rows, after = self.read_runs(filters, page_limit(request.args, PAGE))
        args = _kept(request.args, RUN_ARGS)
        return self.app.render(
            "runs.html",
            runs=rows,
            args=args,
            zone=self.zone,
            statuses=STATUSES,
            triggers=TRIGGERS,
            quick=self.quick_links(args),
            next_href=None if after is None else _href("/runs", args, before=str(after)),
            first_href=_href("/runs", args) if filters.before is not None else None,
            static_page=True,  # no refresh in place: it would reset a form being filled
        )

    def api_runs(self, request: Request) -> Response:
        filters = self.run_filters(request.args)
        rows, after = self.read_runs(filters, page_limit(request.args, PAGE))
        return json_response({"runs": [jsonable(row) for row in rows], "next": after})

    def read_runs(self, filters: history.RunFilters, limit: int) -> history.Page:
        with self.app.connections.connection() as conn:
            return history.runs(conn, filters, limit)

    def run_filters(self, args: MultiDict[str, str]) -> history.RunFilters:
        """The filters of a query string (400 naming a bad one and what it may be)."""
        since, until = self.date_range(args)
        return history.RunFilters(
            job=_text(args, "job"),
            status=_choice(args, "status", STATUSES),
            trigger=_choice(args, "trigger", TRIGGERS),
            since=since,
            until=until,
            before=_id(args, "before"),
        )

    def quick_links(self, args: dict[str, str]) -> list[tuple[str, str, bool]]:
        """(label, URL, chosen) for one click each: failed runs, since this day last week,
        each of its days; each keeps the other filters."""
        today = datetime.now(ZoneInfo(self.zone)).date()
        week = (today - timedelta(days=WEEK)).isoformat()
        failed = args.get("status") == RunStatus.FAILED
        links = [
            ("failed", _href("/runs", args, status=None if failed else "failed"), failed),
            (
                f"last {WEEK} days",
                _href("/runs", args, since=week, until=None),
                args.get("since") == week and "until" not in args,
            ),
        ]
        for back in range(WEEK + 1):
            day = (today - timedelta(days=back)).isoformat()
            label = "today" if back == 0 else (today - timedelta(days=back)).strftime("%a %d %b")
            chosen = args.get("since") == day and args.get("until") == day
            links.append((label, _href("/runs", args, since=day, until=day), chosen))
        return links

    # --- alerts ----------------------------------------------------------------------

    def alerts_page(self, request: Request) -> Response:
        filters = self.alert_filters(request.args)
        rows, after = self.read_alerts(filters, page_limit(request.args, PAGE))
        args = _kept(request.args, ALERT_ARGS)
        return self.app.render(
            "alerts.html",
            alerts=rows,
            args=args,
            zone=self.zone,
            here=_href("/alerts", args),
            upto=max((row["id"] for row in rows if row["acknowledged_at"] is None), default=None),
            next_href=None if after is None else _href("/alerts", args, before=str(after)),
            first_href=_href("/alerts", args) if filters.before is not None else None,
            notice=self.app.notice(request),
            static_page=True,
        )

    def api_alerts(self, request: Request) -> Response:
        filters = self.alert_filters(request.args)
        rows, after = self.read_alerts(filters, page_limit(request.args, PAGE))
        return json_response({"alerts": [jsonable(row) for row in rows], "next": after})

    def read_alerts(self, filters: history.AlertFilters, limit: int) -> history.Page:
        with self.app.connections.connection() as conn:
            return history.alerts(conn, filters, limit)

    def alert_filters(self, args: MultiDict[str, str]) -> history.AlertFilters:
        since, until = self.date_range(args)
        return history.AlertFilters(
            type=_text(args, "type"),
            job=_text(args, "job"),
            only_open=_flag(args, "open"),
            since=since,
            until=until,
            before=_id(args, "before"),
        )

    def ack_all(self, request: Request) -> Response:
        """Acknowledge every open alert matching the filters given (as query parameters or
        form fields: `type`, `job`, `since`, `until`; none: every open alert), and none
        newer than `upto` when given; answers how many."""
        values = request.values
        since, until = self.date_range(values)
        with self.app.connections.connection() as conn:
            count = alert_store.acknowledge_open(
                conn,
                type=_text(values, "type"),
                job=_text(values, "job"),
                since=since,
                until=until,
                upto=_id(values, "upto"),
            )
        self.app.log.info("alerts_acknowledged", count=count, via="http")
        return self.app.acted(request, "acknowledged_all", str(count), {"acknowledged": count})

    # --- dates -----------------------------------------------------------------------

    def date_range(self, args: MultiDict[str, str]) -> tuple[datetime | None, datetime | None]:
        return (
            self.moment(args, "since", end_of_day=False),
            self.moment(args, "until", end_of_day=True),
        )

    def moment(self, args: MultiDict[str, str], name: str, *, end_of_day: bool) -> datetime | None:
        """A date or a date and time; in SCHEDULE_TIMEZONE unless it names its offset. A
        date alone is its midnight, or with `end_of_day` the next one."""
        raw = (args.get(name) or "").strip()
        if not raw:
            return None
        zone = ZoneInfo(self.zone)
        try:
            if len(raw) == len("2026-12-01"):
                day = date.fromisoformat(raw) + timedelta(days=1 if end_of_day else 0)
                return datetime.combine(day, time(), tzinfo=zone)
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise BadRequest(
                f"{name}: a date (YYYY-MM-DD) or a date and time (YYYY-MM-DD HH:MM[:SS]), "
                f"in {self.zone} (SCHEDULE_TIMEZONE) unless it ends with an offset or Z"
            ) from None
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


def _kept(args: MultiDict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The filters given (an empty form field is no filter), for the links of a page."""
    return {name: args[name].strip() for name in names if (args.get(name) or "").strip()}


def _href(path: str, args: dict[str, str], **changes: str | None) -> str:
    chosen = {**args, **changes}
    query = urlencode({k: v for k, v in chosen.items() if v is not None})
    return f"{path}?{query}" if query else path


def _text(args: MultiDict[str, str], name: str) -> str | None:
    raw = (args.get(name) or "").strip()
    if len(raw) > MAX_TEXT:
        raise BadRequest(f"{name}: at most {MAX_TEXT} characters")
    return raw or None


def _choice(args: MultiDict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    raw = _text(args, name)
    if raw is not None and raw not in allowed:
        raise BadRequest(f"{name}: one of {', '.join(allowed)}")
    return raw


def _id(args: MultiDict[str, str], name: str) -> int | None:
    raw = _text(args, name)
    if raw is None:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise BadRequest(f"{name}: an id, as `next` gave it")
    return int(raw)


def _flag(args: MultiDict[str, str], name: str) -> bool:
    raw = (args.get(name) or "0").strip().lower()
    if raw not in ("0", "1", "true", "false", "yes", "no", ""):
        raise BadRequest(f"{name}: 1 or 0")
    return raw in ("1", "true", "yes")


def page_limit(args: MultiDict[str, str], default: int) -> int:
    """A page's `limit`: from 1 to MAX_LIMIT rows (400 otherwise), `default` when not given;
    every paged route of the API reads it here."""
    raw = args.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit: a whole number from 1 to {MAX_LIMIT}")
    return int(raw)
