"""HTTP clients: the one place holding timeouts and the retry policy."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import tenacity

T = TypeVar("T")

RETRY_MAX_DELAY_S = 10.0  # cap of the exponential backoff
RETRY_AFTER_MAX_S = 60.0  # a server's Retry-After is honoured up to this
NOTIFY_TIMEOUT_S = 5.0  # webhooks and heartbeats: short, never holding up a job
USER_AGENT = "worker/0.1"


class CallFailed(Exception):
    """An HTTP call that did not give a usable answer.

    `reason` is short and safe to store (`http_401`, `timeout`, `bad_response`...);
    `transient` failures are worth retrying.
    """

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        transient: bool = False,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.transient = transient
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.attempts = 1


class Stopped(Exception):
    """A stop was requested before the call started."""


def build_http(timeout_s: float) -> httpx.Client:
    """The process's shared connection pool; every request carries `timeout_s`."""
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=32),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
    )


def send(
    http: httpx.Client, method: str, url: str, *, should_stop: Callable[[], bool], **kwargs: Any
) -> httpx.Response:
    """One attempt. Transport errors, timeouts, 5xx and 429 are transient; other 4xx are not."""
    if should_stop():
        raise Stopped()
    try:
        response = http.request(method, url, **kwargs)
    except httpx.TimeoutException as exc:
        raise CallFailed("timeout", type(exc).__name__, transient=True) from None
    except httpx.TransportError as exc:
        raise CallFailed("connection_error", type(exc).__name__, transient=True) from None
    code = response.status_code
    if code == 429 or code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise CallFailed(
            f"http_{code}", transient=True, status_code=code, retry_after_s=retry_after
        )
    if code >= 400:
        raise CallFailed(f"http_{code}", status_code=code)
    return response


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, how long between them, and how to sleep (interruptibly)."""

    attempts: int
    wait: Callable[[tenacity.RetryCallState], float]
    sleep: Callable[[float], None]

    @classmethod
    def exponential(
        cls, attempts: int, base_s: float, sleep: Callable[[float], None]
    ) -> RetryPolicy:
        """base, 2*base, 4*base ... capped at RETRY_MAX_DELAY_S; Retry-After wins when given."""
        backoff = tenacity.wait_exponential(multiplier=base_s, max=RETRY_MAX_DELAY_S)

        def wait(state: tenacity.RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome else None
            if isinstance(failure, CallFailed) and failure.retry_after_s is not None:
                return min(failure.retry_after_s, RETRY_AFTER_MAX_S)
            return float(backoff(state))

        return cls(attempts, wait, sleep)

    @classmethod
    def fixed(cls, attempts: int, delay_s: float, sleep: Callable[[float], None]) -> RetryPolicy:
        return cls(attempts, tenacity.wait_fixed(delay_s), sleep)

    def call(self, fn: Callable[[], T]) -> T:
        """Call `fn`, retrying transient CallFailed; a final CallFailed carries `attempts`.

        Parse the answer inside `fn`: a bad answer is a permanent CallFailed, not retried,
        and it too reports how many attempts it took to get there.
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=self.wait,
            sleep=self.sleep,
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, CallFailed) and e.transient),
            reraise=True,
        )
        try:
            return retrying(fn)
        except CallFailed as exc:
            exc.attempts = retrying.statistics.get("attempt_number", 1)
            raise


@dataclass(frozen=True)
class Usage:
    """The part of Tavily's usage answer the quota job needs."""

    plan_limit: int
    plan_usage: int

    @property
    def remaining(self) -> int:
        return max(self.plan_limit - self.plan_usage, 0)


class TavilyClient:
    """GET the usage endpoint for one API key, with the retry policy."""

    def __init__(
        self, http: httpx.Client, url: str, retry: RetryPolicy, should_stop: Callable[[], bool]
    ) -> None:
        self.http = http
        self.url = url
        self.retry = retry
        self.should_stop = should_stop

    def usage(self, api_key: str) -> Usage:
        headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        return self.retry.call(
            lambda: parse_usage(
                send(self.http, "GET", self.url, headers=headers, should_stop=self.should_stop)
            )
        )


def parse_usage(response: httpx.Response) -> Usage:
    """Validate the answer: account.plan_limit and account.plan_usage, whole and not negative."""
    account = _json_object(response).get("account")
    if not isinstance(account, dict):
        raise CallFailed("bad_response", "no account object")
    return Usage(
        plan_limit=_count(account, "plan_limit"),
        plan_usage=_count(account, "plan_usage"),
    )


def _json_object(response: httpx.Response) -> dict[str, Any]:
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


def notify(
    http: httpx.Client, method: str, url: str, *, json: Any = None, attempts: int = 2
) -> str | None:
    """Fire-and-forget delivery (webhooks, heartbeats): short timeout, one retry, never raises.

    Returns None when delivered, else a short error description free of the URL.
    """
    error = "not attempted"
    for _ in range(attempts):
        try:
            response = http.request(method, url, json=json, timeout=NOTIFY_TIMEOUT_S)
        except httpx.HTTPError as exc:
            error = type(exc).__name__
            continue
        if response.status_code < 400:
            return None
        error = f"http_{response.status_code}"
        if response.status_code < 500 and response.status_code != 429:
            break
    return error


@dataclass(frozen=True)
class StockOrder:
    """One replenish request: who needs how many items, and the key the producer dedupes on."""

    campaign_id: int
    user_id: int
    quantity: int
    idempotency_key: str


class ProducerClient:
    """POST stock orders to the producer API (REPLENISH_API_URL), with the retry policy."""

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        token: str | None,
        retry: RetryPolicy,
        should_stop: Callable[[], bool],
    ) -> None:
        self.http = http
        self.url = url
        self.token = token
        self.retry = retry
        self.should_stop = should_stop

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
        return self.retry.call(
            lambda: parse_items(
                send(
                    self.http,
                    "POST",
                    self.url,
                    json=body,
                    headers=headers,
                    should_stop=self.should_stop,
                ),
                order.quantity,
            )
        )


def parse_items(response: httpx.Response, quantity: int) -> list[str]:
    """Validate the answer `{"items": [...]}`: a list of at most `quantity` strings."""
    items = _json_object(response).get("items")
    if not isinstance(items, list):
        raise CallFailed("bad_response", "no items list")
    if not all(isinstance(item, str) for item in items):
        raise CallFailed("bad_response", "items are not all strings")
    if len(items) > quantity:
        raise CallFailed("bad_response", f"{len(items)} items for a quantity of {quantity}")
    return items
