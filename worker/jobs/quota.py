"""Refresh each Tavily API key's remaining quota from Tavily's usage endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import db
from ..clients import TavilyClient, Usage
from ..http_client import Bounds, CallFailed, RetryPolicy
from ..inflight import map_unordered
from .base import JobContext

NAME = "quota"
PAGE_SIZE = 500
KEY_LOCK_TIMEOUT_MS = 2000  # a single-row UPDATE by id has no reason to wait longer


def run_once(ctx: JobContext) -> None:
    """One pass: every key with `remaining_quota <= plan_limit`, each at most once."""
    settings = ctx.settings
    client = TavilyClient(
        ctx.http,
        settings.tavily_usage_url,
        RetryPolicy.exponential(settings.max_retries, settings.retry_base_delay_s, ctx.sleep),
        ctx.should_stop,
        Bounds(settings.http_timeout_s, settings.http_max_body_bytes),
    )
    row = ctx.conn.execute(db.query("quota.count_quota_keys")).fetchone()
    count = row["n"] if row else 0
    ctx.log.info("tavily_keys_fetched", count=count)
    result = ctx.result
    ctx.progress(0, count)
    calls = map_unordered(
        lambda key: client.usage(key["api_key"]),
        _keys(ctx),
        limit=settings.quota_concurrency,
        should_stop=ctx.should_stop,
    )
    for key, outcome in calls:
        if isinstance(outcome, Usage):
            _store(ctx, key, outcome)
        else:
            _record_failure(ctx, key, outcome)
        ctx.progress(result.total, count)
    ctx.log.info(
        "tavily_quota_update_completed",
        total_keys=result.total,
        success_count=result.succeeded,
        failed_count=result.failed,
        elapsed_seconds=ctx.elapsed_s(),
    )


def key_prefix(api_key: str) -> str:
    """The only form of a key that may appear in logs, run rows and alerts."""
    return f"{api_key[:10]}..."


def _keys(ctx: JobContext) -> Iterator[dict[str, Any]]:
    # Keyset pages: memory stays flat however many keys there are, and no transaction is
    # held open while the HTTP calls run. Paging by id also means no key is called twice.
    after_id = 0
    while True:
        page = ctx.conn.execute(
            db.query("quota.fetch_quota_keys_page"), {"after_id": after_id, "limit": PAGE_SIZE}
        ).fetchall()
        yield from page
        if len(page) < PAGE_SIZE:
            return
        after_id = page[-1]["id"]


def _store(ctx: JobContext, key: dict[str, Any], usage: Usage) -> None:
    prefix = key_prefix(key["api_key"])
    old_quota = key["remaining_quota"]
    change = {
        "key_id": key["id"],
        "key_prefix": prefix,
        "old_quota": old_quota,
        "new_quota": usage.remaining,
        "plan_limit": usage.plan_limit,
        "plan_usage": usage.plan_usage,
        "quota_change": usage.remaining - old_quota,
    }
    if ctx.dry_run:
        ctx.log.info("tavily_quota_would_update", **change)
        ctx.result.ok()
        return
    with (
        ctx.item(prefix, "tavily_quota_write_failed", key_id=key["id"], key_prefix=prefix) as write,
        ctx.transaction(),
    ):
        db.limit_lock_wait(ctx.conn, KEY_LOCK_TIMEOUT_MS)
        ctx.conn.execute(
            db.query("quota.update_key_quota"),
            {"id": key["id"], "remaining_quota": usage.remaining, "plan_limit": usage.plan_limit},
        )
    if write.failed:
        return
    if usage.remaining == old_quota:
        ctx.log.debug("tavily_quota_unchanged", **change)
    else:
        ctx.log.info("tavily_quota_updated", **change)
    ctx.result.ok()


def _record_failure(ctx: JobContext, key: dict[str, Any], error: Exception) -> None:
    prefix, key_id = key_prefix(key["api_key"]), key["id"]
    if not isinstance(error, CallFailed):
        # A bug, not an API answer: keep the type, never the message (it could echo the key).
        name = type(error).__name__
        ctx.log.error("tavily_quota_check_failed", key_id=key_id, key_prefix=prefix, error=name)
        ctx.result.fail(prefix, "internal_error", key_id=key_id, error=name)
        return
    # reason: http_<status>, timeout, connection_error, bad_response, response_too_large
    fields = {"key_id": key_id, "key_prefix": prefix, "reason": error.reason}
    fields["attempts"] = error.attempts
    if error.reason == "timeout":
        ctx.log.warning("tavily_api_timeout", detail=error.detail, **fields)
    elif error.status_code is not None:
        ctx.log.warning("tavily_api_http_error", status_code=error.status_code, **fields)
    else:
        ctx.log.warning("tavily_api_error", detail=error.detail, **fields)
    ctx.result.fail(
        prefix, error.reason, key_id=key_id, detail=error.detail, attempts=error.attempts
    )
