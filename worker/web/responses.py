"""The JSON answers of the API: one shape for every route."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from werkzeug.wrappers import Response

from .. import status


def json_response(body: Any, code: int = 200) -> Response:
    return Response(
        json.dumps(body, indent=2) + "\n",
        status=code,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A database row with its times as ISO 8601 UTC text."""
    return {k: status.iso(v) if isinstance(v, datetime) else v for k, v in row.items()}
