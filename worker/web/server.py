"""The listener: waitress, its I/O thread and its handler threads, started and closed by the
daemon.

waitress buffers each request whole on its own I/O thread before a handler thread sees it, so
a slow or hostile client holds one socket, never a job or the stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.server import create_server

from ..jobs import runtime
from ..settings import Settings
from .access import is_loopback
from .app import App
from .connections import Connections, DatabaseCheck

SERVER_THREADS = 4  # handler threads; each keeps at most one database connection
CHANNEL_TIMEOUT_S = 30  # an idle or dribbling connection is closed after this long
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 16 * 1024  # the largest request is a small form
CLOSE_WAIT_S = 0.5  # the I/O thread's poll wakes on the trigger at once


class Endpoint:
    """The listener, its I/O thread and its handler threads; `close()` ends them all."""

    def __init__(self, server: Any, sockets: dict[int, Any], app: App) -> None:
        self._server = server
        self._sockets = sockets  # the I/O thread's own map: the listener and every connection
        self.app = app
        self.port = int(server.effective_port)
        self._thread = threading.Thread(target=server.run, name="http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Close the listener and every connection; never waits for a handler in progress.

        The sockets are closed on the I/O thread itself (its map is not thread-safe); with
        its map empty, its loop ends.
        """
        self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._sockets))
        self._server.task_dispatcher.set_thread_count(0)
        self._thread.join(CLOSE_WAIT_S)
        self.app.connections.close()


def serve(
    settings: Settings,
    *,
    stalled: Callable[[], str | None],
    log: Any,
    on_request: Callable[[], None] | None = None,
    handlers: runtime.Handlers | None = None,
) -> Endpoint:
    """Listen on WORKER_HTTP_HOST:WORKER_HTTP_PORT; raises OSError when the port is taken.

    `stalled()` tells /healthz why the daemon's loop looks stuck, or None while it is alive;
    `on_request()` tells the loop that a run was requested here, so that it starts at once.
    """
    assert settings.http_port is not None
    connections = Connections(settings)
    check = DatabaseCheck(settings)
    app = App(settings, stalled, log, connections, check, on_request, handlers)
    sockets: dict[int, Any] = {}
    server = create_server(
        app,
        map=sockets,
        host=settings.http_host,
        port=settings.http_port,
        threads=SERVER_THREADS,
        channel_timeout=CHANNEL_TIMEOUT_S,
        max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=MAX_BODY_BYTES,
        ident="worker",
        expose_tracebacks=False,
    )
    endpoint = Endpoint(server, sockets, app)
    log.info(
        "http_listening",
        host=settings.http_host,
        port=endpoint.port,
        token=settings.http_token is not None,
        loopback=is_loopback(settings.http_host),
    )
    return endpoint
