"""Alerts: a worker_alerts row first (the source of truth), then the optional webhook."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from psycopg.types.json import Jsonb

from . import clients, db
from .db import Conn

LEVELS = ("INFO", "WARNING", "ERROR")
DISCORD_MAX_CHARS = 2000


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
    row = conn.execute(
        db.query("insert_alert"),
        {
            "type": type,
            "level": level,
            "job": job,
            "message": message,
            "metadata": Jsonb(metadata or {}),
        },
    ).fetchone()
    assert row is not None
    alert = {
        "id": row["id"],
        "type": type,
        "level": level,
        "job": job,
        "message": message,
        "metadata": metadata or {},
        "created_at": row["created_at"],
    }
    if log is not None:
        log.warning("alert_raised", alert_id=row["id"], type=type, level=level)
    if webhook_url and http is not None:
        error = clients.notify(
            http, "POST", webhook_url, json=webhook_payload(alert, webhook_format)
        )
        if error and log is not None:
            log.warning(
                "alert_webhook_failed", alert_id=row["id"], error=error, format=webhook_format
            )
    return int(row["id"])


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
    return {
        "text": _text(alert),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": _headline(alert)[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": alert["message"][:3000]}},
        ],
    }


def _discord(alert: dict[str, Any]) -> dict[str, Any]:
    return {"content": _text(alert)[:DISCORD_MAX_CHARS]}


def _dingtalk(alert: dict[str, Any]) -> dict[str, Any]:
    return {"msgtype": "text", "text": {"content": _text(alert)}}


def _feishu(alert: dict[str, Any]) -> dict[str, Any]:
    return {"msg_type": "text", "content": {"text": _text(alert)}}


def _wecom(alert: dict[str, Any]) -> dict[str, Any]:
    return {"msgtype": "text", "text": {"content": _text(alert)}}


_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "json": _json,
    "slack": _slack,
    "discord": _discord,
    "dingtalk": _dingtalk,
    "feishu": _feishu,
    "wecom": _wecom,
}
