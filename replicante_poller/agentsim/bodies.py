"""What each node answers on its GET routes, by datastore kind and fault, serialised once."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import socket
import struct
import threading
import zlib
from collections.abc import Callable

from ..agentapi import AGENT_INFO, DATASTORE_INFO, SHARDS
from .api import dumps, error
from .faults import KINDS, Fault, NodeSpec
from .wire import Route, chunk, response, response_head

_CHECKOUT = hashlib.sha1(b"replicante-agent-sim").hexdigest()
_HUGE_PADDING = 1 << 20
_DEEP_NESTING = 30_000  # levels of [...]: 60,000 bytes, under the poller's 64 KiB cap
_BOMB_SPACES = 50 * (1 << 20)  # decompressed size of the gzip bomb (about 50 KB on the wire)
_STREAM_CHUNK = 64 * 1024  # spaces per chunk of the endless chunked body
_RESET_LENGTH, _RESET_SENT = 5000, 100  # announced and actually sent body bytes before the RST
_REDIRECT_TO = "https://example.invalid" + AGENT_INFO
_DATASTORE_DOWN = error(500, "datastore unreachable")


def routes(spec: NodeSpec, primary: bool) -> dict[str, Route]:
    """The GET routes of one node, fault applied, serialised once."""
    fault = spec.fault
    agent: dict[str, object] = {"version": {"checkout": _CHECKOUT, "number": "0.7.0", "taint": "not tainted"}}
    datastore: dict[str, object] = {
        "cluster_display_name": spec.display_name, "cluster_id": spec.cluster_id,
        "kind": spec.kind, "node_id": spec.node_id, "version": KINDS[spec.kind][1]}
    shards = _shards(spec, primary)
    if fault is Fault.WRONG_CLUSTER:
        datastore["cluster_id"] = spec.cluster_id + "-impostor"
    elif fault is Fault.HUGE:
        agent["padding"] = "x" * _HUGE_PADDING
    elif fault is Fault.BAD_SCHEMA:
        shards[0]["role"] = 42
    elif fault is Fault.WRONG_TYPES:
        datastore["node_id"] = 12
    table: dict[str, Route] = {AGENT_INFO: response(200, dumps(agent)),
                               DATASTORE_INFO: response(200, dumps(datastore)),
                               SHARDS: response(200, dumps({"shards": shards}))}
    if fault is Fault.NODE_DOWN:
        table[DATASTORE_INFO] = table[SHARDS] = _DATASTORE_DOWN
    elif fault is Fault.GARBAGE:
        table = {path: response(200, b'{"version": <<garbage') for path in table}
    elif fault is Fault.WRONG_CONTENT_TYPE:
        table[AGENT_INFO] = response(200, dumps(agent), "text/html; charset=utf-8")
    elif fault is Fault.AGENT_ERROR:
        table[AGENT_INFO] = error(500, "agent internal error")
    elif fault in _HOSTILE_AGENT_INFO:
        table[AGENT_INFO] = _HOSTILE_AGENT_INFO[fault]()
    return table


def _shards(spec: NodeSpec, primary: bool) -> list[dict[str, object]]:
    """Shards as the real agents shape them: a primary reports no lag (it is what others lag
    behind); Kafka counts its commit offset in `offset` and its lag in `messages`."""
    role = "primary" if primary else "secondary"

    def lag(unit: object, value: int) -> object:
        return None if primary else {"unit": unit, "value": value}

    if spec.kind == "MongoDB":
        return [{"id": "rs0", "role": role, "commit_offset": {"unit": "seconds", "value": 1700000000},
                 "lag": lag("seconds", 0)}]
    if spec.kind == "Kafka":
        offset, messages = {"unit": "offset"}, {"unit": "messages"}
        return [{"id": "events/0", "role": role, "commit_offset": {"unit": offset, "value": 1042},
                 "lag": lag(messages, 0)},
                {"id": "events/1", "role": role, "commit_offset": {"unit": offset, "value": 977},
                 "lag": lag(messages, 3)},
                {"id": "events/2", "role": {"unknown": "leaderless"},
                 "commit_offset": {"unit": offset, "value": 311}, "lag": None}]
    unit = {"unit": "zxid"}
    return [{"id": spec.cluster_id, "role": role, "commit_offset": {"unit": unit, "value": 0x100000042},
             "lag": lag(unit, 0)}]


# --- hostile agent info -----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Endless:
    """A chunked body that never ends: `head` (with the first chunk), then `chunk` for as long
    as the client reads (sendall blocks while its buffers are full)."""

    head: bytes
    chunk: bytes

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(self.head)
        while not stop.is_set():  # a gone client fails sendall; stop() shuts the socket down
            sock.sendall(self.chunk)


@dataclasses.dataclass(frozen=True)
class _ResetMidBody:
    """Headers announcing more body than sent, then an abortive close: the client sees a RST."""

    data: bytes

    def serve(self, sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(self.data)
        # SO_LINGER (on, 0 s): close() discards state and sends RST instead of FIN; the
        # handler's finally closes the socket (no TLS close_notify is sent either).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _endless_chunked() -> _Endless:
    first = response_head(200, extra="Transfer-Encoding: chunked\r\n") + b"\r\n" + chunk(b'{"version":')
    return _Endless(first, chunk(b" " * _STREAM_CHUNK))


def _reset_mid_body() -> _ResetMidBody:
    announced = response_head(200, extra=f"Content-Length: {_RESET_LENGTH}\r\n") + b"\r\n"
    return _ResetMidBody(announced + b'{"version":'.ljust(_RESET_SENT))


@functools.lru_cache(maxsize=2)
def _gzip_bomb(spaces: int) -> bytes:
    """gzip of `{"version":` and `spaces` spaces, compressed in 1 MiB steps (pure; built once)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [compressor.compress(b'{"version":')]
    for offset in range(0, spaces, len(block)):
        parts.append(compressor.compress(block[:spaces - offset]))
    parts.append(compressor.flush())
    return b"".join(parts)


# fault -> builder of its agent info route (the faults that only change agent info)
_HOSTILE_AGENT_INFO: dict[Fault, Callable[[], Route]] = {
    Fault.ENDLESS_CHUNKED: _endless_chunked,
    Fault.DEEP_NESTING: lambda: response(200, b"[" * _DEEP_NESTING + b"]" * _DEEP_NESTING),
    Fault.NAN: lambda: response(200, b'{"version":{"checkout":"x","number":NaN,"taint":"t"}}'),
    Fault.DUPLICATE_KEYS: lambda: response(
        200, b'{"version":{"checkout":"x","number":"0.7.0","taint":"t"},'
             b'"version":{"checkout":"y","number":"0.8.0","taint":"t"}}'),
    Fault.INVALID_UTF8: lambda: response(200, b'{"version":{"checkout":"bad\xff","number":"0.7.0","taint":"t"}}'),
    Fault.REDIRECT: lambda: response(302, content_type=None, extra=f"Location: {_REDIRECT_TO}\r\n"),
    Fault.SERVICE_UNAVAILABLE: lambda: error(503, "agent overloaded", "ServiceUnavailable",
                                             "Retry-After: 30\r\n"),
    Fault.RESET_MID_BODY: _reset_mid_body,
    Fault.GZIP_BOMB: lambda: response(200, _gzip_bomb(_BOMB_SPACES), extra="Content-Encoding: gzip\r\n"),
}
