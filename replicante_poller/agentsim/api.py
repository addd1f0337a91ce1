"""The agent API ("unstable"): its paths, JSON encoding and the error answers routes share."""
from __future__ import annotations

import json

from ..agentapi import (  # noqa: F401  (the simulator's routes use them from here)
    ACTION_INFO_PREFIX,
    ACTIONS_FINISHED,
    ACTIONS_PREFIX,
    ACTIONS_QUEUE,
    AGENT_INFO,
    API,
    DATASTORE_INFO,
    SCHEDULE_PREFIX,
    SHARDS,
)
from .wire import Response, response


def dumps(value: object) -> bytes:
    """Compact JSON, as agents send it."""
    return json.dumps(value, separators=(",", ":")).encode()


def error(status: int, message: str, variant: str | None = None, extra: str = "") -> Response:
    """An agent error answer: the message, its layers, and the error variant."""
    body = {"error": message, "layers": [message], "trace": None, "variant": variant}
    return response(status, dumps(body), extra=extra)


EMPTY_404 = response(404, content_type=None)
NOT_FOUND = error(404, "path not found", "NotFound")
NOT_ALLOWED = error(405, "method not allowed", "MethodNotAllowed", "Allow: GET\r\n")
BAD_REQUEST = error(400, "malformed HTTP request", "BadRequest")
