"""Who may use the endpoint, and which POSTs are a person's (ARCHITECTURE.md, "The HTTP
endpoint"): a token or loopback only, and a form POST only from this dashboard."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Forbidden, Unauthorized
from werkzeug.wrappers import Request

LOOPBACK_NAMES = ("localhost",)
BASIC_CHALLENGE = WWWAuthenticate("basic", {"realm": "worker", "charset": "UTF-8"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a listen address or a Host header's name) is this machine only."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Access:
    """The rules for one endpoint: its token (WORKER_HTTP_TOKEN) and whether it listens on
    loopback only (WORKER_HTTP_HOST)."""

    def __init__(self, token: str | None, listen_host: str) -> None:
        self.token = token
        self.loopback = is_loopback(listen_host)

    def check(self, request: Request) -> None:
        """Raise 401/403 unless the request may go on."""
        if self.token is None:
            self._check_tokenless(request)
            by_script = False
        else:
            by_script = self._check_token(request, self.token)
        writes = request.method not in ("GET", "HEAD", "OPTIONS")
        if writes and not by_script and not same_origin(request):
            raise Forbidden(
                "a form POST must come from this dashboard: its Origin or Referer must match "
                "the Host (scripts: send Authorization: Bearer <WORKER_HTTP_TOKEN>)"
            )

    def _check_tokenless(self, request: Request) -> None:
        if not self.loopback:
            raise Forbidden(
                "set WORKER_HTTP_TOKEN to use the dashboard, the API and /metrics on a "
                "non-loopback address (WORKER_HTTP_HOST)"
            )
        # A page elsewhere could point its own name at 127.0.0.1 (DNS rebinding): without a
        # token, only loopback names are served.
        if not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
            raise Forbidden("without WORKER_HTTP_TOKEN, use http://localhost or 127.0.0.1")

    @staticmethod
    def _check_token(request: Request, token: str) -> bool:
        """True for a script's Bearer token; False for Basic (a browser sends it by itself)."""
        auth = request.authorization
        supplied = None
        if auth is not None and auth.type == "bearer":
            supplied = auth.token
        elif auth is not None and auth.type == "basic":
            supplied = auth.password
        if supplied is None or not hmac.compare_digest(supplied.encode(), token.encode()):
            raise Unauthorized(
                "WORKER_HTTP_TOKEN is required: Authorization: Bearer <token>, "
                "or HTTP Basic auth with the token as password",
                www_authenticate=BASIC_CHALLENGE,
            )
        return auth is not None and auth.type == "bearer"


def same_origin(request: Request) -> bool:
    """The POST's Origin (or, lacking one, its Referer) names the host it was sent to."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == request.host.lower()
