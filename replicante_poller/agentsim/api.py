"""The agent API ("unstable") as simulated agents speak it: JSON encoding and the error
answers routes share (its paths are `replicante_poller.agentapi`)."""
from __future__ import annotations

import json

from .wire import Response, response


def dumps(value: object) -> bytes:
    """Compact JSON, as agents send it."""
    return json.dumps(value, separators=(",", ":")).encode()


def error(status: int, message: str, variant: str | None = None, extra: str = "") -> Response:
    """An agent error answer: the message, its layers, and the error variant."""
    body = {"error": message, "layers": [message], "trace": None, "variant": variant}
    return response(status, dumps(body), extra=extra)


EMPTY_404 = response(404, content_type=None)
NOT_FOUND = EMPTY_404  # real agents (actix-web) answer unknown paths with no body
NOT_ALLOWED = error(405, "method not allowed", "MethodNotAllowed", "Allow: GET\r\n")
BAD_REQUEST = error(400, "malformed HTTP request", "BadRequest")
