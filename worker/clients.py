"""The product APIs' clients: Tavily's usage endpoint and the producer's stock orders.

How a call is bounded and retried is `http_client`'s; here is what to send and what a
usable answer looks like.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import httpx

from .http_client import Answer, Bounds, CallFailed, RetryPolicy, fetch

T = TypeVar("T")


class _Client:
    """One endpoint, called through the retry policy, each attempt bounded by `bounds`."""

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        retry: RetryPolicy,
        should_stop: Callable[[], bool],
        bounds: Bounds,
    ) -> None:
        self.http = http
        self.url = url
        self.retry = retry
        self.should_stop = should_stop
        self.bounds = bounds

    def _call(self, method: str, parse: Callable[[Answer], T], **kwargs: Any) -> T:
        """`method` on the endpoint until an attempt's answer passes `parse`.

        The answer is parsed inside the attempt: a bad one is a permanent CallFailed that
        reports how many attempts it took.
        """

        def attempt(timeout_s: float) -> T:
            bounds = replace(self.bounds, timeout_s=timeout_s)
            answer = fetch(
                self.http, method, self.url, bounds=bounds, should_stop=self.should_stop, **kwargs
            )
            return parse(answer)

        return self.retry.call(attempt, timeout_s=self.bounds.timeout_s)


@dataclass(frozen=True)
class Usage:
    """The part of Tavily's usage answer the quota job needs."""

    plan_limit: int
    plan_usage: int

    @property
    def remaining(self) -> int:
        return max(self.plan_limit - self.plan_usage, 0)


class TavilyClient(_Client):
    """GET the usage endpoint for one API key, each attempt bounded, with the retry policy."""

    def usage(self, api_key: str) -> Usage:
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        return self._call("GET", parse_usage, headers=headers)


def parse_usage(response: Answer) -> Usage:
    """Validate the answer: account.plan_limit and account.plan_usage, whole and not negative."""
    account = _require_object(response).get("account")
    if not isinstance(account, dict):
        raise CallFailed("bad_response", "no account object")
    return Usage(
        plan_limit=_count(account, "plan_limit"),
        plan_usage=_count(account, "plan_usage"),
    )


def _require_object(response: Answer) -> dict[str, Any]:
    """The answer's JSON object; anything else is a bad response (CallFailed)."""
    try:
        body = response.json()
    except ValueError:
        raise CallFailed("bad_response", "body is not JSON") from None
    if not isinstance(body, dict):
        raise CallFailed("bad_response", "body is not a JSON object")
    return body


def _count(obj: dict[str, Any], field: str) -> int:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CallFailed("bad_response", f"account.{field} is not a number")
    if not math.isfinite(value) or value != int(value):
        raise CallFailed("bad_response", f"account.{field} is not a whole number")
    if value < 0:
        raise CallFailed("bad_response", f"account.{field} is negative")
    return int(value)


@dataclass(frozen=True)
class StockOrder:
    """One replenish request: who needs how many items, and the key the producer dedupes on."""

    campaign_id: int
    user_id: int
    quantity: int
    idempotency_key: str


class ProducerClient(_Client):
    """POST stock orders to the producer API (REPLENISH_API_URL), with the retry policy."""

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        token: str | None,
        retry: RetryPolicy,
        should_stop: Callable[[], bool],
        bounds: Bounds,
    ) -> None:
        super().__init__(http, url, retry, should_stop, bounds)
        self.token = token

    def request_items(self, order: StockOrder) -> list[str]:
        """The items the producer made for `order`; CallFailed (with `attempts`) otherwise."""
        headers = {"Accept": "application/json", "Idempotency-Key": order.idempotency_key}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = {
            "campaign_id": order.campaign_id,
            "user_id": order.user_id,
            "quantity": order.quantity,
        }
        return self._call(
            "POST",
            lambda answer: parse_items(answer, order.quantity),
            json=body,
            headers=headers,
        )


def parse_items(response: Answer, quantity: int) -> list[str]:
    """Validate the answer `{"items": [...]}`: a list of at most `quantity` strings."""
    items = _require_object(response).get("items")
    if not isinstance(items, list):
        raise CallFailed("bad_response", "no items list")
    if not all(isinstance(item, str) for item in items):
        raise CallFailed("bad_response", "items are not all strings")
    if len(items) > quantity:
        raise CallFailed("bad_response", f"{len(items)} items for a quantity of {quantity}")
    return items
