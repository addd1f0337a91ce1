"""The stdlib HTTP server pieces both listeners share (status API and gateway)."""
from __future__ import annotations

import gzip
import json
import logging
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 256
IDLE_TIMEOUT = 30.0  # seconds an idle or stalled client may hold its thread (per read)
GZIP_MIN = 4096
DIGITS = re.compile(r"[0-9]{1,12}")  # a Content-Length (str.isdigit() also takes "²")


class CountingServer(ThreadingHTTPServer):
    """A threaded server with bounded connections; request errors are logged and counted.

    A client that goes away or stalls past its timeout is not an error."""

    daemon_threads = True
    on_error: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, address: Any, handler: Any, max_connections: int = MAX_CONNECTIONS):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("%s: connection limit reached, refusing %s", type(self).__name__, client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            prepared = self.prepare(request)
            if prepared is None:
                self.shutdown_request(request)
            else:
                super().process_request_thread(prepared, client_address)
        finally:
            self._slots.release()

    def prepare(self, request: socket.socket) -> Optional[socket.socket]:
        """Per-connection set-up on the connection's thread (e.g. TLS); None drops it."""
        request.settimeout(IDLE_TIMEOUT)
        return request

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, socket.timeout)):
            log.debug("%s: client %s went away: %r", type(self).__name__, client_address, error)
            return
        log.exception("%s: request from %s failed", type(self).__name__, client_address)
        self.on_error()


def _accepts_gzip(header: str) -> bool:
    """`gzip` listed in Accept-Encoding and not refused with q=0."""
    for item in header.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def send(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes,
         compressible: bool = False) -> None:
    """A complete response with Content-Type and Content-Length; a `compressible` body of
    some size is gzipped for a client that accepts it (a 10,000-agent /metrics is ~8 MB)."""
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    if compressible:
        request.send_header("Vary", "Accept-Encoding")
        if len(body) >= GZIP_MIN and _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=5)
            request.send_header("Content-Encoding", "gzip")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


def send_json(request: BaseHTTPRequestHandler, status: int, document: Any) -> None:
    """A JSON response."""
    send(request, status, "application/json", json.dumps(document, indent=1).encode())
