"""The agent API ("unstable") as simulated agents speak it: JSON encoding and the error
answers routes share, for both generations (its paths are `replicante_poller.agentapi`)."""
from __future__ import annotations

import json

from .wire import Compressible, Response, compressible, response


def dumps(value: object) -> bytes:
    """Compact JSON, as agents send it."""
    return json.dumps(value, separators=(",", ":")).encode()


def error(status: int, message: str, variant: str | None = None, extra: str = "") -> Response:
    """A legacy agent error answer: the message, its layers, and the error variant."""
    body = {"error": message, "layers": [message], "trace": None, "variant": variant}
    return response(status, dumps(body), extra=extra)


EMPTY_404 = response(404, content_type=None)
NOT_FOUND = EMPTY_404  # real agents (actix-web) answer unknown paths with no body
NOT_ALLOWED = error(405, "method not allowed", "MethodNotAllowed", "Allow: GET\r\n")
BAD_REQUEST = error(400, "malformed HTTP request", "BadRequest")


# --- replisdk agents (actix-web; every answer with a body goes through its Compress middleware)

def sdk_error_document(message: str, cause: str | None = None, trail: list[str] | None = None) -> dict[str, object]:
    """replisdk's JSON error: `error_cause` only when it differs, `error_trail` only past two
    layers; keys sorted, as serde_json's map writes them."""
    document: dict[str, object] = {"error": True}
    if cause is not None and cause != message:
        document["error_cause"] = cause
    document["error_msg"] = message
    if trail is not None and len(trail) > 2:
        document["error_trail"] = trail
    return document


def sdk_error(status: int, message: str, cause: str | None = None) -> Compressible:
    """A replisdk JSON error answer."""
    return compressible(status, dumps(sdk_error_document(message, cause)))


def plain_text(status: int, text: str) -> Compressible:
    """actix-web's own error answers (extractors, payload limits): the message as plain text."""
    return compressible(status, text.encode(), "text/plain; charset=utf-8")
