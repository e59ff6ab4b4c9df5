"""Top up active campaigns whose available stock fell below their low watermark."""

from __future__ import annotations

from typing import Any

from .. import db
from ..clients import ProducerClient, StockOrder
from ..http_client import Bounds, CallFailed, RetryPolicy
from ..inflight import map_unordered
from ..settings import ConfigError
from .base import JobContext

NAME = "replenish"
ALERT_TYPE = "STOCK_REPLENISH_FAILED"
ALERT_LISTED = 10  # campaigns named in the alert message (the metadata holds every one)
ALERT_ERROR_ABOVE = 10  # more failed campaigns than this make the alert an ERROR
# A campaign row the app keeps locked longer fails that campaign (nothing written, the same
# Idempotency-Key next run) rather than making the pass queue behind the app.
CAMPAIGN_LOCK_TIMEOUT_MS = 5000

Campaign = dict[str, Any]


def run_once(ctx: JobContext) -> None:
    """One pass: each low campaign asked once for its missing items, written in its own
    transaction; one alert at the end if some could not be replenished."""
    campaigns = ctx.conn.execute(db.query("replenish.fetch_low_stock")).fetchall()
    ctx.log.info("replenish_campaigns_fetched", count=len(campaigns))
    ctx.result.details.update(items_received=0, skipped=0)
    if ctx.dry_run:
        _report_dry_run(ctx, campaigns)
    else:
        _replenish(ctx, campaigns)
    result = ctx.result
    # A dry run replenished nothing: it says how many campaigns it would have asked for.
    done = {"would_replenish" if ctx.dry_run else "replenished": result.succeeded}
    ctx.log.info(
        "replenish_completed",
        total_campaigns=result.total,
        **done,
        failed=result.failed,
        skipped=result.details["skipped"],
        items_received=result.details["items_received"],
        dry_run=ctx.dry_run,
        elapsed_seconds=ctx.elapsed_s(),
    )


def idempotency_key(campaign: Campaign) -> str:
    """`<campaign_id>:<stock_version>`: unchanged until stock is added, so a retry repeats it."""
    return f"{campaign['id']}:{campaign['stock_version']}"


def _replenish(ctx: JobContext, campaigns: list[Campaign]) -> None:
    client = _producer(ctx)
    failures: list[dict[str, Any]] = []
    calls = map_unordered(
        lambda campaign: client.request_items(_order(campaign)),
        campaigns,
        limit=ctx.settings.campaign_concurrency,
        should_stop=ctx.should_stop,
    )
    ctx.progress(0, len(campaigns))
    for done, (campaign, outcome) in enumerate(calls, 1):
        if isinstance(outcome, list):
            _store(ctx, campaign, outcome, failures)
        elif isinstance(outcome, CallFailed):
            _fail(
                ctx,
                campaign,
                failures,
                reason=outcome.reason,
                error=str(outcome),
                attempts=outcome.attempts,
            )
        else:
            # A bug, not an API answer: keep the type, never the message.
            error = f"internal_error: {type(outcome).__name__}"
            _fail(ctx, campaign, failures, reason="internal_error", error=error, attempts=1)
        ctx.progress(done, len(campaigns))
    if failures:
        _alert(ctx, failures, campaigns)


def _producer(ctx: JobContext) -> ProducerClient:
    settings = ctx.settings
    if not settings.replenish_api_url:
        raise ConfigError("REPLENISH_API_URL is required by the replenish job")
    retry = RetryPolicy.fixed(
        settings.replenish_retry_times, settings.replenish_retry_delay_ms / 1000, ctx.sleep
    )
    return ProducerClient(
        ctx.http,
        settings.replenish_api_url,
        settings.replenish_api_token,
        retry,
        ctx.should_stop,
        Bounds(settings.http_timeout_s, settings.http_max_body_bytes),
    )


def _order(campaign: Campaign) -> StockOrder:
    return StockOrder(
        campaign_id=campaign["id"],
        user_id=campaign["user_id"],
        quantity=campaign["quantity"],
        idempotency_key=idempotency_key(campaign),
    )


def _store(
    ctx: JobContext, campaign: Campaign, items: list[str], failures: list[dict[str, Any]]
) -> None:
    campaign_id = campaign["id"]
    changed: str | None = None
    with ctx.guard() as write:
        changed = _write(ctx, campaign, items)
    if write.error is not None:
        error = f"db_error: {write.error}"
        _fail(ctx, campaign, failures, reason="db_error", error=error, attempts=1)
        return
    if changed is not None:
        # Someone else stocked it since we looked: these items would be a second helping.
        ctx.log.warning(
            "campaign_replenish_skipped",
            campaign_id=campaign_id,
            reason=changed,
            discarded=len(items),
        )
        ctx.result.details["skipped"] += 1
        return
    ctx.log.info(
        "campaign_replenished",
        campaign_id=campaign_id,
        requested=campaign["quantity"],
        received=len(items),
        idempotency_key=idempotency_key(campaign),
    )
    ctx.result.details["items_received"] += len(items)
    ctx.result.ok()


def _write(ctx: JobContext, campaign: Campaign, items: list[str]) -> str | None:
    """Insert the items in the campaign's own transaction, unless its stock changed since
    the pass looked (then return why, writing nothing)."""
    with ctx.transaction():
        db.limit_lock_wait(ctx.conn, CAMPAIGN_LOCK_TIMEOUT_MS)
        changed = _stock_changed(ctx, campaign)
        if changed is None:
            ctx.conn.execute(
                db.query("replenish.insert_campaign_stock"),
                {"campaign_id": campaign["id"], "payloads": items},
            )
    return changed


def _stock_changed(ctx: JobContext, campaign: Campaign) -> str | None:
    # Lock first, then read the version in a statement of its own: it then sees whatever
    # a replica (or the app) holding the lock before us committed.
    locked = ctx.conn.execute(
        db.query("replenish.lock_active_campaign"), {"campaign_id": campaign["id"]}
    ).fetchone()
    if locked is None:
        return "campaign_inactive"
    row = ctx.conn.execute(
        db.query("replenish.current_stock_version"), {"campaign_id": campaign["id"]}
    ).fetchone()
    if row is None or row["stock_version"] != campaign["stock_version"]:
        return "stock_changed"
    return None


def _fail(
    ctx: JobContext,
    campaign: Campaign,
    failures: list[dict[str, Any]],
    *,
    reason: str,
    error: str,
    attempts: int,
) -> None:
    campaign_id = campaign["id"]
    ctx.log.warning(
        "campaign_replenish_failed",
        campaign_id=campaign_id,
        reason=reason,
        error=error,
        attempts=attempts,
    )
    ctx.result.fail(
        f"{campaign['name']} ({campaign_id})",
        reason,
        campaign_id=campaign_id,
        error=error,
        attempts=attempts,
    )
    failures.append(
        {
            "campaign_id": campaign_id,
            "campaign_name": campaign["name"],
            "user_id": campaign["user_id"],
            "error": error,
            "retry_count": attempts - 1,
        }
    )


def _alert(ctx: JobContext, failures: list[dict[str, Any]], campaigns: list[Campaign]) -> None:
    # Most depleted first, like the pass: the message names the ones that matter most.
    rank = {campaign["id"]: i for i, campaign in enumerate(campaigns)}
    failures.sort(key=lambda failure: rank[failure["campaign_id"]])
    count, low_campaigns = len(failures), len(campaigns)
    lines = [f"{count} of {low_campaigns} low-stock campaigns could not be replenished"]
    lines += [
        f"- {f['campaign_name']} ({f['campaign_id']}): {f['error']}"
        for f in failures[:ALERT_LISTED]
    ]
    if count > ALERT_LISTED:
        lines.append(f"... and {count - ALERT_LISTED} more")
    ctx.alert(
        type=ALERT_TYPE,
        level="ERROR" if count > ALERT_ERROR_ABOVE else "WARNING",
        message="\n".join(lines),
        metadata={"failed": count, "low_campaigns": low_campaigns, "failures": failures},
    )


def _report_dry_run(ctx: JobContext, campaigns: list[Campaign]) -> None:
    for campaign in campaigns:
        ctx.log.info(
            "replenish_would_request",
            campaign_id=campaign["id"],
            campaign_name=campaign["name"],
            available=campaign["available"],
            quantity=campaign["quantity"],
            idempotency_key=idempotency_key(campaign),
        )
        ctx.result.ok()
