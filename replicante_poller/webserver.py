"""The stdlib HTTP server pieces both listeners share (status API and gateway)."""
from __future__ import annotations

import json
import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

log = logging.getLogger(__name__)


class CountingServer(ThreadingHTTPServer):
    """A threaded server whose request errors are logged with a traceback and counted."""

    daemon_threads = True
    on_error: Callable[[], None] = staticmethod(lambda: None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("%s: request from %s failed", type(self).__name__, client_address)
        self.on_error()


def send(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes) -> None:
    """A complete response with Content-Type and Content-Length."""
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


def send_json(request: BaseHTTPRequestHandler, status: int, document: Any) -> None:
    """A JSON response."""
    send(request, status, "application/json", json.dumps(document, indent=1).encode())
