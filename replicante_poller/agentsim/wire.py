"""HTTP/1.1 on one connection: request heads in, pre-serialised responses out, closing politely."""
from __future__ import annotations

import dataclasses
import gzip
import http
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol, Union

_MAX_LINE = 8192
_MAX_HEADERS = 100
MAX_DISCARD = 1 << 20  # request bodies up to this size are read and dropped; larger ones close
_LINGER_SECONDS = 2.0  # at most this long draining a client after answering without its body
_CLOSE = b"Connection: close\r\n\r\n"


@dataclasses.dataclass(frozen=True)
class Response:
    """Pre-serialised response: `head` is the status line and headers without the blank line.

    Both wire forms (keep-alive and closing) are built once, so a request costs no copy.
    """

    head: bytes
    body: bytes
    _keep: bytes = dataclasses.field(init=False, repr=False, compare=False)
    _close: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keep", self.head + b"\r\n" + self.body)
        object.__setattr__(self, "_close", self.head + _CLOSE + self.body)

    def wire(self, close: bool, head_only: bool = False) -> bytes:
        if head_only:
            return self.head + (_CLOSE if close else b"\r\n")
        return self._close if close else self._keep


class Special(Protocol):
    """A response that takes over the connection and ends it (hostile agents)."""

    def serve(self, sock: socket.socket, stop: threading.Event) -> None: ...


def response_head(status: int, content_type: str | None = "application/json", extra: str = "") -> bytes:
    """Status line, Server, Content-Type (unless None) and `extra` header lines; no blank line."""
    text = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nServer: replicante-agent-sim\r\n"
    if content_type:
        text += f"Content-Type: {content_type}\r\n"
    return (text + extra).encode("latin-1")


def response(status: int, body: bytes = b"", content_type: str | None = "application/json",
             extra: str = "") -> Response:
    """A complete response with its Content-Length (before the `extra` header lines)."""
    return Response(response_head(status, content_type, f"Content-Length: {len(body)}\r\n{extra}"), body)


@dataclasses.dataclass(frozen=True)
class Compressible:
    """A response and its gzip twin, as actix-web's Compress middleware serves it: gzip to a
    client that accepts it (chunked, `Content-Encoding: gzip`, `Vary`), the plain one else."""

    plain: Response
    gzipped: Response

    def pick(self, accept_encoding: str) -> Response:
        return self.gzipped if accepts_gzip(accept_encoding) else self.plain


def compressible(status: int, body: bytes, content_type: str = "application/json") -> Compressible:
    """Both wire forms of a replisdk answer with a body, built once (gzip mtime 0: deterministic)."""
    packed = gzip.compress(body, mtime=0)
    head = response_head(status, content_type, "Content-Encoding: gzip\r\nVary: accept-encoding\r\n"
                                               "Transfer-Encoding: chunked\r\n")
    return Compressible(response(status, body, content_type), Response(head, chunk(packed) + b"0\r\n\r\n"))


Route = Union[Response, Special, Compressible]


def accepts_gzip(accept_encoding: str) -> bool:
    """`gzip` (or `*`) listed in Accept-Encoding and not refused with q=0."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            quality = params.strip().lower()
            if not quality.startswith("q=") or _quality(quality[2:]) > 0:
                return True
    return False


def _quality(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # the request target as received, without the query: not percent-decoded
    close: bool
    body_length: int  # -1: a body we will not read (the connection closes after the response)
    content_length: int = 0  # as announced (0 when absent)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # lower-case names


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.x."""


def read_request(rfile: Callable[[int], bytes], max_body: int = MAX_DISCARD) -> Request | None:
    """Read one request head (and size its body); None on a clean end of stream. Bodies over
    `max_body` bytes are not read (body_length -1: the connection closes after the answer)."""
    line = rfile(_MAX_LINE + 1)
    if line in (b"\r\n", b"\n"):  # one stray empty line is tolerated (RFC 9112 2.2)
        line = rfile(_MAX_LINE + 1)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest
    method, target, version = parts
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = rfile(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise BadRequest
        name, value = name.strip().lower(), value.strip()
        # a repeated field is one comma-separated list (RFC 9110 5.3), as a verifier must see it
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    else:
        raise BadRequest
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    lengths = {part.strip() for part in headers.get("content-length", "0").split(",")}
    length = lengths.pop() if len(lengths) == 1 else ""  # identical repeats are one (RFC 9112 6.3)
    if not length.isdigit():
        raise BadRequest
    content_length = body_length = int(length)
    if "transfer-encoding" in headers or "expect" in headers or body_length > max_body:
        body_length, close = -1, True
    return Request(method, target.split("?", 1)[0], close, body_length, content_length, headers)


def linger(sock: socket.socket, limit: int = MAX_DISCARD) -> None:
    """Lingering close (RFC 9112 9.6) after answering without reading the body: send FIN, then
    drop what the client still sends (up to `limit` bytes), so closing with unread data does
    not RST the answer away."""
    socket.socket.shutdown(sock, socket.SHUT_WR)  # on the fd: no TLS state involved
    sock.settimeout(_LINGER_SECONDS)
    deadline, received = time.monotonic() + _LINGER_SECONDS, 0
    while received < limit and time.monotonic() < deadline:
        data = socket.socket.recv(sock, 65536)  # raw TLS records: only counted, never decrypted
        if not data:
            return
        received += len(data)


def hold(sock: socket.socket) -> None:
    """Read and drop until the client closes, or stop() shuts the socket down."""
    sock.settimeout(None)
    while sock.recv(4096):
        pass
