"""HTTP plumbing: the shared connection pool, bounded calls, the retry policy, notifications.

The one place holding timeouts, body limits and how long a server's Retry-After is honoured.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import time
import zlib
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpcore
import httpx

T = TypeVar("T")

RETRY_MAX_DELAY_S = 10.0  # cap of the exponential backoff
RETRY_AFTER_MAX_S = 60.0  # a server's Retry-After is honoured up to this
NOTIFY_TIMEOUT_S = 5.0  # webhooks and heartbeats: short, never holding up a job
NOTIFY_MAX_BODY_BYTES = 64 * 1024  # a receiver's reply is read (for keep-alive), not used
USER_AGENT = "worker/0.1"


class CallFailed(Exception):
    """A call that did not give a usable answer; RetryPolicy retries the `transient` ones.

    From `fetch`, `reason` is short and safe to store (`http_401`, `timeout`,
    `bad_response`...).
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
        self.body = b""  # the start of an error answer's body, when the caller asked for it


class Stopped(Exception):
    """A stop was requested: the call is abandoned and nothing of it is used."""


@dataclass(frozen=True)
class Bounds:
    """What one attempt may cost: its total time and the largest body it reads."""

    timeout_s: float
    max_body_bytes: int


@dataclass(frozen=True)
class Answer:
    """A whole, bounded answer with a status below 400."""

    status_code: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# The deadline of the call the current thread is making: every socket operation of that
# call waits at most until then, whichever phase it is in (connect, TLS, headers, body).
_deadline: ContextVar[float | None] = ContextVar("http_deadline", default=None)


def _clamp(timeout: float | None, expired: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("the call's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes never wait past the calling thread's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _clamp(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport over a pool whose connections honour the call's deadline.

    httpx's timeouts apply to each read on its own, so a peer sending a byte now and then
    could hold a call for ever; the deadline bounds the call as a whole.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )


def build_http(timeout_s: float) -> httpx.Client:
    """The process's shared connection pool; every request carries `timeout_s`.

    Bodies are asked for uncompressed: the size cap then measures what is held in memory.
    """
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=32)
    return httpx.Client(
        transport=_DeadlineTransport(limits),
        timeout=httpx.Timeout(timeout_s),
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        follow_redirects=False,
    )


def fetch(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    bounds: Bounds,
    should_stop: Callable[[], bool] = lambda: False,
    error_body_bytes: int = 0,
    **kwargs: Any,
) -> Answer:
    """One bounded attempt: `bounds.timeout_s` covers connecting, waiting and the whole body.

    The body is streamed and refused past `bounds.max_body_bytes` (a larger Content-Length
    before reading any of it); the connection is then closed. Transport errors, timeouts,
    5xx and 429 are transient; other 4xx and an oversized body are not. An error answer's
    body is not read, unless `error_body_bytes`: then up to that many bytes of it (never
    more than `bounds.max_body_bytes`, within the same deadline) are the CallFailed's `body`.
    A stop requested meanwhile abandons the call (Stopped).
    """
    if should_stop():
        raise Stopped()
    deadline = time.monotonic() + bounds.timeout_s
    token = _deadline.set(deadline)
    try:
        with http.stream(method, url, timeout=bounds.timeout_s, **kwargs) as response:
            failure = _status_failure(response)
            if failure is not None:
                keep = min(error_body_bytes, bounds.max_body_bytes)
                if keep > 0:
                    failure.body = _error_body(response, keep, deadline, should_stop)
                raise failure
            body = _read_body(response, bounds.max_body_bytes, deadline, should_stop)
            return Answer(response.status_code, response.headers, body)
    except httpx.TimeoutException as exc:
        raise CallFailed("timeout", type(exc).__name__, transient=True) from None
    except httpx.TransportError as exc:
        raise CallFailed("connection_error", type(exc).__name__, transient=True) from None
    finally:
        _deadline.reset(token)


def _status_failure(response: httpx.Response) -> CallFailed | None:
    """The failure an error status is (4xx, 5xx), None for any other."""
    code = response.status_code
    if code == 429 or code >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return CallFailed(
            f"http_{code}", transient=True, status_code=code, retry_after_s=retry_after
        )
    if code >= 400:
        return CallFailed(f"http_{code}", status_code=code)
    return None


def _error_body(
    response: httpx.Response, keep: int, deadline: float, should_stop: Callable[[], bool]
) -> bytes:
    """At most `keep` bytes of an error answer's body: reading stops there, at the deadline
    or a stop, keeping what came (the rest is never read: the connection is not reused)."""
    raw = b""
    with contextlib.suppress(httpx.HTTPError):  # a timeout or a drop mid-body
        for chunk in response.iter_raw():
            raw += chunk
            if len(raw) >= keep or should_stop() or time.monotonic() > deadline:
                break
    try:  # a compressed one only while it inflates to no more than `keep`
        return _decoded(response, raw[:keep], keep)
    except CallFailed:
        return b""


def _read_body(
    response: httpx.Response, limit: int, deadline: float, should_stop: Callable[[], bool]
) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(response, f"Content-Length {declared} is over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        size += len(chunk)
        if size > limit:
            raise _too_large(response, f"body is over {limit} bytes")
        if should_stop():
            raise Stopped()
        if time.monotonic() > deadline:
            raise CallFailed("timeout", "deadline", transient=True)
        chunks.append(chunk)
    return _decoded(response, b"".join(chunks), limit)


def _decoded(response: httpx.Response, body: bytes, limit: int) -> bytes:
    # Asked for identity; a server that compresses anyway is inflated no further than limit.
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise CallFailed("bad_response", f"unsupported Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits=47)  # a zlib or a gzip header, detected
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise CallFailed("bad_response", f"body is not valid {encoding}") from None
    if len(plain) > limit:
        raise _too_large(response, f"decompressed body is over {limit} bytes")
    return plain


def _too_large(response: httpx.Response, detail: str) -> CallFailed:
    response.close()  # the rest is never read: this connection is not reused
    return CallFailed("response_too_large", detail)


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


# How long to wait after a failed attempt: its number (1 for the first) and its failure.
Wait = Callable[[int, CallFailed], float]


def _never() -> bool:
    return False


def _ignore(_: CallFailed) -> None:
    pass


def _honouring_retry_after(wait: Wait) -> Wait:
    """`wait`, unless the server said how long: then its Retry-After, up to RETRY_AFTER_MAX_S."""

    def honoured(attempt: int, failure: CallFailed) -> float:
        if failure.retry_after_s is not None:
            return min(failure.retry_after_s, RETRY_AFTER_MAX_S)
        return wait(attempt, failure)

    return honoured


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, how long between them, and how to sleep (interruptibly).

    An item costs at most `budget_s(timeout_s)`: every attempt within its own deadline and
    every wait within `max_wait_s`; the item's deadline is enforced on top of that.
    """

    attempts: int
    wait: Wait
    sleep: Callable[[float], None]
    max_wait_s: float

    @classmethod
    def exponential(
        cls, attempts: int, base_s: float, sleep: Callable[[float], None]
    ) -> RetryPolicy:
        """base, 2*base, 4*base ... capped at RETRY_MAX_DELAY_S; Retry-After wins when given."""

        def backoff(attempt: int, _: CallFailed) -> float:
            return min(base_s * 2.0 ** (attempt - 1), RETRY_MAX_DELAY_S)

        max_wait_s = max(RETRY_AFTER_MAX_S, RETRY_MAX_DELAY_S)
        return cls(attempts, _honouring_retry_after(backoff), sleep, max_wait_s)

    @classmethod
    def fixed(
        cls,
        attempts: int,
        delay_s: float,
        sleep: Callable[[float], None],
        *,
        retry_after: bool = False,
    ) -> RetryPolicy:
        """`delay_s` between attempts; with `retry_after`, a server's Retry-After wins."""

        def constant(attempt: int, _: CallFailed) -> float:
            return delay_s

        if not retry_after:
            return cls(attempts, constant, sleep, delay_s)
        return cls(
            attempts, _honouring_retry_after(constant), sleep, max(delay_s, RETRY_AFTER_MAX_S)
        )

    def budget_s(self, timeout_s: float) -> float:
        """The most one item may take: every attempt's deadline and every wait between."""
        return self.attempts * timeout_s + (self.attempts - 1) * self.max_wait_s

    def call(
        self,
        fn: Callable[[float], T],
        *,
        timeout_s: float,
        budget_s: float | None = None,
        should_stop: Callable[[], bool] = _never,
        on_retry: Callable[[CallFailed], None] = _ignore,
    ) -> T:
        """Call `fn(attempt_timeout_s)`, retrying transient CallFailed; a final CallFailed
        carries `attempts`.

        Parse the answer inside `fn`: a bad answer is a permanent CallFailed, not retried,
        and it too reports how many attempts it took to get there. The attempts share
        `budget_s` (by default `budget_s(timeout_s)`). `on_retry(failure)` hears of each
        retry before its wait; once `should_stop()` is true no further attempt starts and
        the last failure stands.
        """
        deadline = time.monotonic() + (self.budget_s(timeout_s) if budget_s is None else budget_s)
        attempt = 1
        while True:
            try:
                return _within(deadline, fn, timeout_s)
            except CallFailed as exc:
                exc.attempts = attempt
                if not exc.transient or attempt >= self.attempts or should_stop():
                    raise
                on_retry(exc)
                self.sleep(min(self.wait(attempt, exc), max(deadline - time.monotonic(), 0.0)))
                if should_stop():
                    raise
            attempt += 1


def _within(deadline: float, fn: Callable[[float], T], timeout_s: float) -> T:
    """One attempt, given what is left of the item's budget if that is less than `timeout_s`."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise CallFailed("timeout", "the item's budget is spent")
    return fn(min(timeout_s, remaining))


def notify(
    http: httpx.Client, method: str, url: str, *, json: Any = None, attempts: int = 2
) -> str | None:
    """Fire-and-forget delivery (webhooks, heartbeats): each attempt bounded by
    NOTIFY_TIMEOUT_S as a whole, one retry on a transient failure; never raises.

    Returns None when delivered, else a short error description free of the URL.
    """
    bounds = Bounds(NOTIFY_TIMEOUT_S, NOTIFY_MAX_BODY_BYTES)
    error = "not attempted"
    for _ in range(attempts):
        try:
            fetch(http, method, url, bounds=bounds, json=json)
        except CallFailed as exc:
            if exc.reason == "response_too_large":
                return None  # the status said delivered; the reply is of no interest
            error = exc.detail or exc.reason
            if not exc.transient:
                break
            continue
        return None
    return error
