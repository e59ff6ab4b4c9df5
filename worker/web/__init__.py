"""The HTTP endpoint: /healthz, /metrics, the dashboard and its JSON API, on threads of its
own (ARCHITECTURE.md, "The HTTP endpoint").

- `server`: the listener (waitress), started by `serve` and ended by `Endpoint.close`.
- `app`: the WSGI application, its routes (`ROUTES`, one table) and their handlers.
- `access`: the token, loopback and same-origin rules.
- `cache`: the dashboard's data, read at most once a second.
- `connections`: one database connection per handler thread; the /healthz probe.
"""

from .server import Endpoint, serve

__all__ = ["Endpoint", "serve"]
