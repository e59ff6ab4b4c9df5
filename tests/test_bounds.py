"""Bounded HTTP answers: a total deadline per call and a capped body, over loopback."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Sleeps
from tests.support.fakes import Reply, dripped, repeated, serving
from worker import http_client
from worker.http_client import Bounds, CallFailed, RetryPolicy, Stopped

BIG = 64 * 1024 * 1024
CAP = 1024 * 1024
USAGE = b'{"account": {"plan_limit": 1000, "plan_usage": 10}}'


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with http_client.build_http(30.0) as client:
        yield client


def failing_fetch(http: httpx.Client, url: str, timeout_s: float = 2.0) -> tuple[CallFailed, float]:
    """Fetch `url`, expecting a failure; return it and how long the call took."""
    started = time.monotonic()
    with pytest.raises(CallFailed) as failed:
        http_client.fetch(http, "GET", url, bounds=Bounds(timeout_s, CAP))
    return failed.value, time.monotonic() - started


@pytest.mark.parametrize("framing", ["length", "close", "chunked"])
def test_a_body_over_the_cap_is_refused_and_the_connection_closed(
    http: httpx.Client, framing: str
) -> None:
    reply = Reply(200, stream=repeated(BIG), framing=framing, length=BIG)
    with serving(lambda r: reply) as server:
        failure, _ = failing_fetch(http, f"{server.url}/usage")
        # The server could only finish writing 64 MB because the client hung up.
        assert server.wait_idle(10)
    assert (failure.reason, failure.transient) == ("response_too_large", False)
    expected = "Content-Length" if framing == "length" else "body is over 1048576 bytes"
    assert expected in failure.detail


def test_a_body_at_the_cap_is_read_whole(http: httpx.Client) -> None:
    body = b'"' + b"x" * (CAP - 2) + b'"'
    with serving(lambda r: Reply(200, stream=repeated(CAP, body), framing="chunked")) as server:
        answer = http_client.fetch(http, "GET", f"{server.url}/u", bounds=Bounds(2.0, CAP))
    assert len(answer.body) == CAP and answer.json() == "x" * (CAP - 2)


def test_a_compressed_body_is_capped_once_inflated(http: httpx.Client) -> None:
    bomb = gzip.compress(b"\0" * BIG)  # about 64 KB on the wire
    headers = {"Content-Encoding": "gzip"}
    with serving(lambda r: Reply(200, bomb, headers=headers)) as server:
        bomb_failure, _ = failing_fetch(http, f"{server.url}/usage")
        small = gzip.compress(USAGE)
        server.responder = lambda r: Reply(200, small, headers=headers)
        answer = http_client.fetch(http, "GET", f"{server.url}/u", bounds=Bounds(2.0, CAP))
    assert bomb_failure.reason == "response_too_large"
    assert answer.body == USAGE


def test_a_dripping_body_times_out_at_the_deadline(http: httpx.Client) -> None:
    reply = Reply(200, stream=dripped(USAGE), length=len(USAGE), interval_s=0.2)
    with serving(lambda r: reply) as server:
        failure, elapsed_s = failing_fetch(http, f"{server.url}/usage", timeout_s=1.0)
    assert (failure.reason, failure.transient) == ("timeout", True)
    assert 0.9 < elapsed_s < 1.6


def test_dripping_headers_time_out_at_the_deadline(http: httpx.Client) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    reply = Reply(stream=dripped(answer), framing="raw", interval_s=0.1)
    with serving(lambda r: reply) as server:
        failure, elapsed_s = failing_fetch(http, f"{server.url}/usage", timeout_s=1.0)
    assert failure.reason == "timeout"
    assert 0.9 < elapsed_s < 1.6


def test_a_stop_abandons_the_call_mid_body(http: httpx.Client) -> None:
    first_byte = threading.Event()

    def stream() -> Iterator[bytes]:
        yield b"{"
        first_byte.set()
        yield from dripped(b' "a": 1}')()

    reply = Reply(200, stream=stream, length=9, interval_s=0.2)
    with serving(lambda r: reply) as server:
        started = time.monotonic()
        with pytest.raises(Stopped):
            http_client.fetch(
                http, "GET", server.url, bounds=Bounds(30.0, CAP), should_stop=first_byte.is_set
            )
    assert time.monotonic() - started < 2


def test_errors_are_classified_without_reading_their_body(http: httpx.Client) -> None:
    reply = Reply(503, stream=repeated(BIG), framing="close", headers={"Retry-After": "3"})
    with serving(lambda r: reply) as server:
        failure, _ = failing_fetch(http, server.url)
    assert (failure.reason, failure.transient, failure.retry_after_s) == ("http_503", True, 3.0)


def test_an_item_is_bounded_by_attempts_and_capped_waits() -> None:
    assert RetryPolicy.exponential(3, 2.0, Sleeps()).budget_s(30.0) == 3 * 30 + 2 * 60
    assert RetryPolicy.fixed(3, 60.0, Sleeps()).budget_s(30.0) == 3 * 30 + 2 * 60
    given: list[float] = []

    def slow_attempt(timeout_s: float) -> None:
        given.append(timeout_s)
        time.sleep(0.35)  # an attempt overrunning its deadline (it never should)
        raise CallFailed("timeout", transient=True)

    with pytest.raises(CallFailed) as failed:
        RetryPolicy.fixed(3, 0.0, Sleeps()).call(slow_attempt, timeout_s=0.2)
    assert failed.value.detail == "the item's budget is spent" and failed.value.attempts == 3
    assert len(given) == 2 and given[0] == 0.2 and given[1] <= 0.25
