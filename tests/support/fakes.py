"""Scripted HTTP servers on loopback: the Tavily usage API, the producer API, webhook sinks.

Used by the tests and benchmarks, and by hand for local demos:

    uv run python tests/support/fakes.py usage --port 8081 --latency-ms 50
    uv run python tests/support/fakes.py producer --port 8082
    uv run python tests/support/fakes.py sink --port 8083  # prints each webhook/heartbeat
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG_LIMIT_S = 30.0  # a hung reply never outlives this, so no test can wedge a thread for ever


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None


@dataclass
class Reply:
    """What to answer: status, body (dict/list → JSON), headers, a delay, or hang until released."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    hang: bool = False
    drop: bool = False  # close the connection without answering
    # A body written as it is produced, never held whole: `framing` is "length" (declaring
    # `length` bytes), "chunked", "close" (delimited by closing the connection) or "raw"
    # (the stream is the whole answer, status line and headers included).
    stream: Callable[[], Iterator[bytes]] | None = None
    framing: str = "length"
    length: int | None = None
    interval_s: float = 0.0  # pause before each streamed chunk: a drip

    def encoded(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if isinstance(self.body, bytes):
            return self.body, headers
        if isinstance(self.body, str):
            headers.setdefault("Content-Type", "text/html; charset=utf-8")
            return self.body.encode(), headers
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(self.body).encode(), headers


Responder = Callable[[Request], Reply]


class FakeServer:
    """A ThreadingHTTPServer on 127.0.0.1 that records requests and answers via `responder`."""

    def __init__(self, responder: Responder | None = None, *, port: int = 0) -> None:
        self.responder: Responder = responder or (lambda request: Reply())
        self.requests: list[Request] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self.max_active = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever, so only if it runs
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method) and (path is None or r.path == path)
            ]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self._active += 1
            self.max_active = max(self.max_active, self._active)

    def _done(self) -> None:
        with self._lock:
            self._active -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is being answered (a client that hung up ends its answer)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout_s)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without TCP_NODELAY the body waits ~40 ms
            # for the client's delayed ACK, which would dwarf every latency we measure.
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                    received_at=time.monotonic(),
                )
                fake._record(request)
                try:
                    self._answer(fake.responder(request))
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (timeout): expected
                finally:
                    fake._done()

            def _answer(self, reply: Reply) -> None:
                if reply.hang:
                    fake.release.wait(HANG_LIMIT_S)
                elif reply.delay_s:
                    fake.release.wait(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    return
                if reply.stream is not None:
                    _write_stream(self, reply, reply.stream, fake.release)
                    return
                body, headers = reply.encoded()
                self.send_response(reply.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _write_stream(
    handler: BaseHTTPRequestHandler,
    reply: Reply,
    stream: Callable[[], Iterator[bytes]],
    release: threading.Event,
) -> None:
    handler.close_connection = reply.framing != "length"
    if reply.framing != "raw":
        _write_stream_headers(handler, reply)
    chunked = reply.framing == "chunked"
    for chunk in stream():
        if reply.interval_s and release.wait(reply.interval_s):
            return  # the server is stopping: a drip ends at once
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
    if chunked:
        handler.wfile.write(b"0\r\n\r\n")


def _write_stream_headers(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    handler.send_response(reply.status)
    for name, value in reply.headers.items():
        handler.send_header(name, value)
    if reply.framing == "length":
        handler.send_header("Content-Length", str(reply.length))
    elif reply.framing == "chunked":
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Connection", "close")
    handler.end_headers()


@contextmanager
def serving(responder: Responder | None = None) -> Iterator[FakeServer]:
    """`with serving(responder) as server:` a started FakeServer, stopped on leaving."""
    server = FakeServer(responder).start()
    try:
        yield server
    finally:
        server.stop()


def usage_body(
    plan_limit: int, plan_usage: int, *, key_usage: int = 0, key_limit: int | None = None
) -> dict[str, Any]:
    """A Tavily usage answer of the real shape."""
    return {
        "key": {"usage": key_usage, "limit": key_limit},
        "account": {
            "current_plan": "Bootstrap",
            "plan_usage": plan_usage,
            "plan_limit": plan_limit,
            "paygo_usage": 0,
            "paygo_limit": 0,
        },
    }


def repeated(total_bytes: int, chunk: bytes = b"x" * 65536) -> Callable[[], Iterator[bytes]]:
    """A stream of `total_bytes` made of one chunk repeated: a huge body in little memory."""

    def stream() -> Iterator[bytes]:
        left = total_bytes
        while left > 0:
            yield chunk[:left]
            left -= len(chunk)

    return stream


def dripped(data: bytes) -> Callable[[], Iterator[bytes]]:
    """`data` one byte at a time (pace it with Reply.interval_s)."""
    return lambda: (data[i : i + 1] for i in range(len(data)))


class Script:
    """Replies per key: each request for a key takes the next reply; the last one repeats."""

    def __init__(self, key_of: Callable[[Request], str | None], default: Reply) -> None:
        self.key_of = key_of
        self.default = default
        self.replies: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()

    def on(self, key: str, *replies: Reply) -> Script:
        self.replies[key] = list(replies)
        return self

    def __call__(self, request: Request) -> Reply:
        key = self.key_of(request)
        with self._lock:
            queue = self.replies.get(key or "")
            if not queue:
                return self.default
            return queue.pop(0) if len(queue) > 1 else queue[0]


def _main() -> None:
    parser = argparse.ArgumentParser(description="Run a fake API on loopback until interrupted.")
    parser.add_argument("kind", choices=["usage", "producer", "sink"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--plan-limit", type=int, default=15000)
    parser.add_argument("--plan-usage", type=int, default=500)
    args = parser.parse_args()
    delay_s = args.latency_ms / 1000

    def usage(request: Request) -> Reply:
        return Reply(200, usage_body(args.plan_limit, args.plan_usage), delay_s=delay_s)

    def producer(request: Request) -> Reply:
        if request.method == "GET" and request.path == "/stats":  # for the benchmarks' checks
            stats = {"orders": len(server.received("POST")), "max_in_flight": server.max_active}
            return Reply(200, stats)
        order = request.json()
        items = [f"item-{order['campaign_id']}-{i}" for i in range(int(order["quantity"]))]
        return Reply(200, {"items": items}, delay_s=delay_s)

    def sink(request: Request) -> Reply:
        print(request.method, request.path, request.body.decode(errors="replace"), flush=True)
        return Reply(200, {"ok": True}, delay_s=delay_s)

    responder = {"usage": usage, "producer": producer, "sink": sink}[args.kind]
    server = FakeServer(responder, port=args.port)
    server.start()
    print(f"fake {args.kind} API listening on {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    _main()
