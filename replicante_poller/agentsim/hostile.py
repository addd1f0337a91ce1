"""Hostile answers both agent generations can give on their first GET (agent info, node info):
endless or reset bodies, gzip bombs, deep nesting, redirects. Built once per node."""
from __future__ import annotations

import dataclasses
import functools
import socket
import struct
import threading
import zlib

from .wire import Response, chunk, response, response_head

_DEEP_NESTING = 30_000  # levels of [...]: 60,000 bytes, under the poller's 64 KiB cap
_BOMB_SPACES = 50 * (1 << 20)  # decompressed size of the gzip bomb (about 50 KB on the wire)
_STREAM_CHUNK = 64 * 1024  # spaces per chunk of the endless chunked body
_RESET_LENGTH, _RESET_SENT = 5000, 100  # announced and actually sent body bytes before the RST


@dataclasses.dataclass(frozen=True)
class Endless:
    """A chunked body that never ends: `head` (with the first chunk), then `chunk` for as long
    as the client reads (sendall blocks while its buffers are full)."""

    head: bytes
    chunk: bytes

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(self.head)
        while not stop.is_set():  # a gone client fails sendall; stop() shuts the socket down
            sock.sendall(self.chunk)


@dataclasses.dataclass(frozen=True)
class ResetMidBody:
    """Headers announcing more body than sent, then an abortive close: the client sees a RST."""

    data: bytes

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(self.data)
        # SO_LINGER (on, 0 s): close() discards state and sends RST instead of FIN; the
        # handler's finally closes the socket (no TLS close_notify is sent either).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def endless_chunked(prefix: bytes) -> Endless:
    """200 chunked JSON that starts with `prefix` and goes on with spaces forever."""
    first = response_head(200, extra="Transfer-Encoding: chunked\r\n") + b"\r\n" + chunk(prefix)
    return Endless(first, chunk(b" " * _STREAM_CHUNK))


def reset_mid_body(prefix: bytes) -> ResetMidBody:
    """Content-Length 5000, 100 bytes (starting with `prefix`), then a TCP RST."""
    announced = response_head(200, extra=f"Content-Length: {_RESET_LENGTH}\r\n") + b"\r\n"
    return ResetMidBody(announced + prefix.ljust(_RESET_SENT))


def deep_nesting() -> Response:
    """30,000 nested lists."""
    return response(200, b"[" * _DEEP_NESTING + b"]" * _DEEP_NESTING)


def redirect(location: str) -> Response:
    """302 elsewhere."""
    return response(302, content_type=None, extra=f"Location: {location}\r\n")


def gzip_bomb(prefix: bytes) -> Response:
    """About 50 KB of gzip (`prefix` then spaces) that inflates to 50 MB."""
    return response(200, _gzip_bomb(prefix, _BOMB_SPACES), extra="Content-Encoding: gzip\r\n")


@functools.lru_cache(maxsize=4)
def _gzip_bomb(prefix: bytes, spaces: int) -> bytes:
    """gzip of `prefix` and `spaces` spaces, compressed in 1 MiB steps (pure; built once)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [compressor.compress(prefix)]
    for offset in range(0, spaces, len(block)):
        parts.append(compressor.compress(block[:spaces - offset]))
    parts.append(compressor.flush())
    return b"".join(parts)
