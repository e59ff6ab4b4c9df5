"""Helpers for the HTTP endpoint's tests: a daemon with its listener, and a TCP forwarder."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.fakes import Reply, Request, serving, usage_body
from tests.support.processes import WorkerProcess

Spawn = Callable[..., WorkerProcess]
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answer(request: Request) -> Reply:
    """The fake upstream APIs: Tavily's usage and the stock producer."""
    if request.path.startswith("/usage"):
        return Reply(200, usage_body(15000, 500))
    return Reply(200, {"items": []})


@contextmanager
def web_worker(
    spawn: Spawn, db_url: str, service: str = "quota", **env: str
) -> Iterator[tuple[WorkerProcess, str]]:
    """A daemon serving HTTP on a free loopback port; yields it and its base URL."""
    port = free_port()
    with serving(answer) as api:
        worker = spawn(
            service,
            env={
                "DATABASE_URL": db_url,
                "TAVILY_USAGE_URL": f"{api.url}/usage",
                "REPLENISH_API_URL": f"{api.url}/stock",
                "WORKER_HTTP_PORT": str(port),
                **env,
            },
        )
        listening = worker.wait_for("http_listening")
        assert listening["port"] == port
        yield worker, f"http://127.0.0.1:{port}"


def client(base_url: str, **options: Any) -> httpx.Client:
    return httpx.Client(base_url=base_url, timeout=10, **options)


class Forwarder:
    """A TCP forwarder on loopback to the database: close it to take the database away."""

    def __init__(self, target_url: str) -> None:
        parts = conninfo_to_dict(target_url)
        host = str(parts.get("host") or "localhost")
        port = int(str(parts.get("port") or 5432))
        self._target: Any = (
            os.path.join(host, f".s.PGSQL.{port}") if host.startswith("/") else (host, port)
        )
        self._family = socket.AF_UNIX if host.startswith("/") else socket.AF_INET
        self.port = free_port()
        self.url = make_conninfo(target_url, host="127.0.0.1", port=str(self.port))
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        with self._lock:
            doomed = [*self._sockets, *([self._listener] if self._listener else [])]
            self._sockets, self._listener = [], None
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client_sock, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(self._family)
            upstream.connect(self._target)
            with self._lock:
                self._sockets += [client_sock, upstream]
            for a, b in ((client_sock, upstream), (upstream, client_sock)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
