"""Alerts: a worker_alerts row first (the source of truth), then the optional webhook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from . import http_client
from .db import Conn
from .settings import Settings
from .store import alerts as store

LEVELS = ("INFO", "WARNING", "ERROR")
DISCORD_MAX_CHARS = 2000
WECOM_MAX_BYTES = 2048  # WeCom rejects text content over 2048 UTF-8 bytes
RECOVERED = "JOB_RECOVERED"
JUDGED_STATUSES = ("success", "partial", "failed")  # interrupted/abandoned: no opinion


def raise_alert(
    conn: Conn,
    *,
    type: str,
    level: str,
    job: str | None,
    message: str,
    metadata: dict[str, Any] | None = None,
    webhook_url: str | None = None,
    webhook_format: str = "json",
    http: httpx.Client | None = None,
    log: Any = None,
) -> int:
    """Insert the alert row, then deliver it to the webhook if one is set.

    Delivery failures are logged as `alert_webhook_failed` and never raised.
    """
    if level not in LEVELS:
        raise ValueError(f"alert level must be one of {LEVELS}, got {level!r}")
    row = store.insert(
        conn, type=type, level=level, job=job, message=message, metadata=metadata or {}
    )
    alert = {
        "id": row["id"],
        "type": type,
        "level": level,
        "job": job,
        "message": message,
        "metadata": metadata or {},
        "created_at": row["created_at"],
    }
    announce(alert, webhook_url=webhook_url, webhook_format=webhook_format, http=http, log=log)
    return int(row["id"])


def announce(
    alert: dict[str, Any],
    *,
    webhook_url: str | None,
    webhook_format: str = "json",
    http: httpx.Client | None = None,
    log: Any = None,
) -> None:
    """What follows an alert's row (`id`, `type`, `level`, `job`, `message`, `metadata`,
    `created_at`): the `alert_raised` line, then the webhook if one is set. Delivery
    failures are logged as `alert_webhook_failed` and never raised."""
    if log is not None:
        log.warning(
            "alert_raised", alert_id=alert["id"], type=alert["type"], alert_level=alert["level"]
        )
    if webhook_url and http is not None:
        error = http_client.notify(
            http, "POST", webhook_url, json=webhook_payload(alert, webhook_format)
        )
        if error and log is not None:
            log.warning(
                "alert_webhook_failed", alert_id=alert["id"], error=error, format=webhook_format
            )


@dataclass(frozen=True)
class RunOutcome:
    """One recorded run, as the run-level rules see it."""

    job: str
    run_id: int
    status: str
    total: int
    failed: int
    duration_ms: int
    # A declared job's run is one item: it failed or it did not, which RUN_FAILED says.
    one_item: bool = False


# (breached, message, metadata); a rule returns None when the run tells it nothing.
Verdict = tuple[bool, str, dict[str, Any]]


@dataclass(frozen=True)
class Rule:
    """A run-level rule (ARCHITECTURE.md, "The life of a run", step 5) and its alert."""

    name: str
    alert_type: str
    level: str
    check: Callable[[RunOutcome, Settings], Verdict | None]


def _check_failure_rate(run: RunOutcome, settings: Settings) -> Verdict | None:
    if run.total == 0 or run.one_item:
        # No item reached, or a one-item job's: no rate. RUN_FAILED alone says it failed,
        # so a failed declared job raises one alert, not two.
        return None
    rate = run.failed / run.total
    threshold = settings.alert_failure_rate
    message = (
        f"Job {run.job}: {run.failed} of {run.total} items failed ({rate:.0%}) in run "
        f"{run.run_id}, above ALERT_FAILURE_RATE {threshold:.0%} (rule FAILURE_RATE)."
    )
    numbers = {"failure_rate": round(rate, 4), "threshold": threshold}
    return rate > threshold, message, {**numbers, "total": run.total, "failed": run.failed}


def _check_run_failed(run: RunOutcome, settings: Settings) -> Verdict | None:
    # The run row holds the error text; the alert points at it rather than copying it.
    message = (
        f"Job {run.job}: run {run.run_id} failed, {run.failed} of {run.total} items failed "
        f"(rule RUN_FAILED). The error is in worker_job_runs id {run.run_id}."
    )
    return run.status == "failed", message, {"total": run.total, "failed": run.failed}


def _check_slow_run(run: RunOutcome, settings: Settings) -> Verdict | None:
    duration_s = run.duration_ms / 1000
    threshold_s = settings.alert_slow_run_s
    message = (
        f"Job {run.job}: run {run.run_id} took {duration_s:.1f}s, above "
        f"ALERT_SLOW_RUN_SECONDS {threshold_s:g}s (rule SLOW_RUN)."
    )
    return duration_s > threshold_s, message, {"duration_s": duration_s, "threshold_s": threshold_s}


RUN_RULES = (
    Rule("FAILURE_RATE", "JOB_FAILURE_RATE_HIGH", "WARNING", _check_failure_rate),
    Rule("RUN_FAILED", "JOB_FAILED", "ERROR", _check_run_failed),
    Rule("SLOW_RUN", "JOB_SLOW", "WARNING", _check_slow_run),
)


def evaluate_run(
    conn: Conn,
    settings: Settings,
    run: RunOutcome,
    *,
    http: httpx.Client | None = None,
    log: Any = None,
    latest: list[tuple[str, str]] | None = None,
) -> list[int]:
    """Apply the run-level rules to a recorded run; return the ids of the alerts raised.

    `latest` is each rule's latest alert for the job as (rule, type), when the caller read
    it already (`ledger.finish` does, in the statement that records the run); else it is
    read here.

    One alert per streak: a rule is firing while its latest alert row for the job is not
    a JOB_RECOVERED, so worker_alerts alone holds the state. A breach while firing raises
    nothing; a clear run while firing raises one INFO JOB_RECOVERED (metadata.rule).
    Interrupted and abandoned runs neither fire nor clear.
    """
    if run.status not in JUDGED_STATUSES:
        return []
    if latest is None:
        latest = _latest_rule_alerts(conn, run.job)
    firing = {rule for rule, alert_type in latest if alert_type != RECOVERED}
    raised: list[int] = []
    for rule in RUN_RULES:
        change = _streak_change(rule, run, settings, firing=rule.name in firing)
        if change is None:
            continue
        alert_type, level, message, metadata = change
        raised.append(
            raise_alert(
                conn,
                type=alert_type,
                level=level,
                job=run.job,
                message=message,
                metadata=metadata,
                webhook_url=settings.alert_webhook_url,
                webhook_format=settings.alert_webhook_format,
                http=http,
                log=log,
            )
        )
    return raised


def _streak_change(
    rule: Rule, run: RunOutcome, settings: Settings, *, firing: bool
) -> tuple[str, str, str, dict[str, Any]] | None:
    """(type, level, message, metadata) when the run starts or ends a streak, else None."""
    verdict = rule.check(run, settings)
    if verdict is None:
        return None
    breached, message, numbers = verdict
    metadata = {"rule": rule.name, "run_id": run.run_id, "status": run.status, **numbers}
    if breached and not firing:
        return rule.alert_type, rule.level, message, metadata
    if firing and not breached:
        message = (
            f"Job {run.job} recovered: run {run.run_id} ({run.status}) clears "
            f"{rule.alert_type} (rule {rule.name})."
        )
        return RECOVERED, "INFO", message, {**metadata, "cleared": rule.alert_type}
    return None


def rule_alert_filter() -> tuple[list[str], list[str]]:
    """The run-level rules' names and the alert types that hold their streaks."""
    return [rule.name for rule in RUN_RULES], [*(r.alert_type for r in RUN_RULES), RECOVERED]


def _latest_rule_alerts(conn: Conn, job: str) -> list[tuple[str, str]]:
    rules, types = rule_alert_filter()
    return store.latest_rule_alerts(conn, job, rules, types)


def webhook_payload(alert: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The alert in the payload shape of the chosen chat tool."""
    return _FORMATS[fmt](alert)


def _headline(alert: dict[str, Any]) -> str:
    job = f" [{alert['job']}]" if alert.get("job") else ""
    return f"[{alert['level']}] {alert['type']}{job}"


def _text(alert: dict[str, Any]) -> str:
    return f"{_headline(alert)}\n{alert['message']}"


def _json(alert: dict[str, Any]) -> dict[str, Any]:
    created = alert["created_at"]
    return {
        **alert,
        "created_at": created.isoformat() if isinstance(created, datetime) else created,
    }


def _slack(alert: dict[str, Any]) -> dict[str, Any]:
    # Slack reads `text` and mrkdwn as markup: a campaign named "<!channel>" must stay text.
    message = _slack_escape(alert["message"])[:3000]
    return {
        "text": _slack_escape(_text(alert)),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _headline(alert)[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": message}},
        ],
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _discord(alert: dict[str, Any]) -> dict[str, Any]:
    return {"content": _text(alert)[:DISCORD_MAX_CHARS]}


def _dingtalk(alert: dict[str, Any]) -> dict[str, Any]:
    return {"msgtype": "text", "text": {"content": _text(alert)}}


def _feishu(alert: dict[str, Any]) -> dict[str, Any]:
    return {"msg_type": "text", "content": {"text": _text(alert)}}


def _wecom(alert: dict[str, Any]) -> dict[str, Any]:
    return {"msgtype": "text", "text": {"content": _clip_bytes(_text(alert), WECOM_MAX_BYTES)}}


def _clip_bytes(text: str, limit: int) -> str:
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - 3].decode(errors="ignore") + "..."


_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "json": _json,
    "slack": _slack,
    "discord": _discord,
    "dingtalk": _dingtalk,
    "feishu": _feishu,
    "wecom": _wecom,
}
