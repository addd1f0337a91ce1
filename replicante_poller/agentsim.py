"""Reference agent simulator: many Replicante agents ("unstable" API) over HTTPS on loopback.

One listening socket per simulated node, ONE acceptor thread multiplexing all of them with
`selectors`, and one short-lived daemon thread per accepted connection (TLS handshake and a
small HTTP/1.1 keep-alive loop). Response bytes are built once per node at start, so the
simulator is cheap enough to be the benchmark server too.

The actions API (`/api/unstable/actions/*`) is the one dynamic part: each node keeps its
actions in memory, and ONE executor thread per simulator moves them NEW -> RUNNING -> final,
woken by a Condition. `actions=False` gives agents with actions disabled (404, empty body).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import enum
import errno
import functools
import hashlib
import heapq
import http
import itertools
import json
import logging
import pathlib
import re
import resource
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
import zlib
from typing import Any, BinaryIO, Protocol, Union
from collections.abc import Callable, Iterable, Mapping, Sequence

import trustme

_log = logging.getLogger(__name__)

API = "/api/unstable"
AGENT_INFO = API + "/info/agent"
DATASTORE_INFO = API + "/info/datastore"
SHARDS = API + "/shards"
ACTIONS_PREFIX = API + "/actions/"
SCHEDULE_PREFIX = ACTIONS_PREFIX + "schedule/"
ACTIONS_QUEUE = ACTIONS_PREFIX + "queue"
ACTIONS_FINISHED = ACTIONS_PREFIX + "finished"
ACTION_INFO_PREFIX = ACTIONS_PREFIX + "info/"

IDLE_TIMEOUT = 60.0  # seconds a connection may sit idle (or mid-handshake) before it is dropped
_MAX_LINE = 8192
_MAX_HEADERS = 100
_MAX_DISCARD = 1 << 20  # request bodies up to this size are read and dropped; larger ones close
_LINGER_SECONDS = 2.0  # at most this long draining a client after answering without its body
MAX_ACTION_BODY = 64 * 1024  # schedule request bodies above this size are refused with 413
_HUGE_PADDING = 1 << 20
_DEEP_NESTING = 30_000  # levels of [...]: 60,000 bytes, under the poller's 64 KiB cap
_BOMB_SPACES = 50 * (1 << 20)  # decompressed size of the gzip bomb (about 50 KB on the wire)
_STREAM_CHUNK = 64 * 1024  # spaces per chunk of the endless chunked body
_RESET_LENGTH, _RESET_SENT = 5000, 100  # announced and actually sent body bytes before the RST
_REDIRECT_TO = "https://example.invalid" + "/api/unstable/info/agent"
_CHECKOUT = hashlib.sha1(b"replicante-agent-sim").hexdigest()


class Fault(str, enum.Enum):
    """How a simulated agent misbehaves."""

    HEALTHY = "healthy"
    NODE_DOWN = "node_down"
    WRONG_CLUSTER = "wrong_cluster"
    SLOW = "slow"
    GARBAGE = "garbage"
    HUGE = "huge"
    HANGING = "hanging"
    BAD_SCHEMA = "bad_schema"
    WRONG_CONTENT_TYPE = "wrong_content_type"
    AGENT_ERROR = "agent_error"
    # Hostile agents: each applies to agent info unless said otherwise.
    TLS_STALL = "tls_stall"  # accepts TCP, never sends a byte (no ServerHello; plain HTTP: no answer)
    ENDLESS_CHUNKED = "endless_chunked"  # 200 chunked JSON that never ends: `{"version":` then spaces
    DEEP_NESTING = "deep_nesting"  # 30,000 nested lists
    NAN = "nan"  # NaN where a string belongs (not JSON)
    DUPLICATE_KEYS = "duplicate_keys"  # "version" twice
    INVALID_UTF8 = "invalid_utf8"  # byte 0xff inside a string
    WRONG_TYPES = "wrong_types"  # datastore info with an integer node_id
    REDIRECT = "redirect"  # 302 to https://example.invalid
    SERVICE_UNAVAILABLE = "service_unavailable"  # 503 with Retry-After: 30
    RESET_MID_BODY = "reset_mid_body"  # Content-Length 5000, 100 bytes, then a TCP RST
    GZIP_BOMB = "gzip_bomb"  # about 50 KB of gzip that inflates to 50 MB


# kind -> (cluster id prefix, datastore version)
_KINDS = {"MongoDB": ("mongo", "4.0.1"), "Kafka": ("kafka", "2.8.0"), "Zookeeper": ("zk", "3.8.4")}


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """One simulated datastore node and its agent's behaviour."""

    cluster_id: str
    node_id: str
    kind: str = "MongoDB"
    fault: Fault = Fault.HEALTHY
    display_name: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown datastore kind {self.kind!r}; expected one of {sorted(_KINDS)}")
        object.__setattr__(self, "fault", Fault(self.fault))


def fleet(clusters: int, nodes_per_cluster: int, faults: Mapping[Fault, int] = {}) -> list[NodeSpec]:
    """Deterministic fleet; faults go to the first nodes of a round-robin spread over clusters."""
    if clusters < 0 or nodes_per_cluster < 0:
        raise ValueError("clusters and nodes_per_cluster must not be negative")
    counts = {Fault(fault): count for fault, count in faults.items()}
    if any(count < 0 for count in counts.values()):
        raise ValueError("fault counts must not be negative")
    wanted = sum(count for fault, count in counts.items() if fault is not Fault.HEALTHY)
    if wanted > clusters * nodes_per_cluster:
        raise ValueError(f"{wanted} faulty nodes requested but the fleet has only "
                         f"{clusters * nodes_per_cluster} nodes")
    spread = iter([(c, n) for n in range(nodes_per_cluster) for c in range(clusters)])
    assigned = {next(spread): fault for fault in Fault if fault is not Fault.HEALTHY
                for _ in range(counts.get(fault, 0))}
    kinds = list(_KINDS)
    nodes = []
    for c in range(clusters):
        kind = kinds[c % len(kinds)]
        cluster_id = f"{_KINDS[kind][0]}-{c + 1}"
        for n in range(nodes_per_cluster):
            nodes.append(NodeSpec(cluster_id, f"{cluster_id}-node-{n + 1}", kind,
                                  assigned.get((c, n), Fault.HEALTHY)))
    return nodes


@dataclasses.dataclass(frozen=True)
class _Response:
    """Pre-serialised response: `head` is the status line and headers without the blank line.

    Both wire forms (keep-alive and closing) are built once, so a request costs no copy.
    """

    head: bytes
    body: bytes
    _keep: bytes = dataclasses.field(init=False, repr=False, compare=False)
    _close: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keep", self.head + b"\r\n" + self.body)
        object.__setattr__(self, "_close", self.head + b"Connection: close\r\n\r\n" + self.body)

    def wire(self, close: bool, head_only: bool = False) -> bytes:
        if head_only:
            return self.head + (b"Connection: close\r\n\r\n" if close else b"\r\n")
        return self._close if close else self._keep


class _Special(Protocol):
    """A response that takes over the connection and ends it (hostile agents)."""

    def serve(self, sock: socket.socket, stop: threading.Event) -> None: ...


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


_Route = Union[_Response, _Special]


def _response(status: int, body: bytes = b"", content_type: str | None = "application/json",
              extra: str = "") -> _Response:
    phrase = http.HTTPStatus(status).phrase
    head = f"HTTP/1.1 {status} {phrase}\r\nServer: replicante-agent-sim\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    head += f"Content-Length: {len(body)}\r\n{extra}"
    return _Response(head.encode("latin-1"), body)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


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


def _error(status: int, message: str, variant: str | None = None, extra: str = "") -> _Response:
    body = {"error": message, "layers": [message], "trace": None, "variant": variant}
    return _response(status, _dumps(body), extra=extra)


_EMPTY_404 = _response(404, content_type=None)
_NOT_FOUND = _error(404, "path not found", "NotFound")
_NOT_ALLOWED = _error(405, "method not allowed", "MethodNotAllowed", "Allow: GET\r\n")
_BAD_REQUEST = _error(400, "malformed HTTP request", "BadRequest")
_DATASTORE_DOWN = _error(500, "datastore unreachable")
_POST_ONLY = _error(405, "method not allowed", "MethodNotAllowed", "Allow: POST\r\n")
_LENGTH_REQUIRED = _error(411, "request body needs a Content-Length", "LengthRequired")
_TOO_LARGE = _error(413, f"request body larger than {MAX_ACTION_BODY} bytes", "PayloadTooLarge")
_EXPECTATION_FAILED = _error(417, "Expect is not supported: send the body directly", "ExpectationFailed")
_UNAUTHORIZED = _response(401, _dumps({"error": "unauthorized"}))
_ALREADY_EXISTS = _error(409, "action already exists", "ActionAlreadyExists")


def _shards(spec: NodeSpec, primary: bool) -> list[dict[str, object]]:
    role = "primary" if primary else "secondary"
    if spec.kind == "MongoDB":
        return [{"id": "rs0", "role": role, "commit_offset": {"unit": "seconds", "value": 1700000000},
                 "lag": {"unit": "seconds", "value": 0}}]
    if spec.kind == "Kafka":
        unit = {"unit": "offset"}
        return [{"id": "events/0", "role": role, "commit_offset": {"unit": unit, "value": 1042},
                 "lag": {"unit": unit, "value": 0}},
                {"id": "events/1", "role": role, "commit_offset": {"unit": unit, "value": 977},
                 "lag": {"unit": unit, "value": 0}},
                {"id": "events/2", "role": {"unknown": "leaderless"},
                 "commit_offset": {"unit": unit, "value": 311}, "lag": None}]
    unit = {"unit": "zxid"}
    return [{"id": spec.cluster_id, "role": role, "commit_offset": {"unit": unit, "value": 0x100000042},
             "lag": {"unit": unit, "value": 0}}]


def _routes(spec: NodeSpec, primary: bool) -> dict[str, _Route]:
    """The GET routes of one node, fault applied, serialised once."""
    fault = spec.fault
    agent: dict[str, object] = {"version": {"checkout": _CHECKOUT, "number": "0.7.0", "taint": "not tainted"}}
    datastore: dict[str, object] = {
        "cluster_display_name": spec.display_name, "cluster_id": spec.cluster_id,
        "kind": spec.kind, "node_id": spec.node_id, "version": _KINDS[spec.kind][1]}
    shards = _shards(spec, primary)
    if fault is Fault.WRONG_CLUSTER:
        datastore["cluster_id"] = spec.cluster_id + "-impostor"
    elif fault is Fault.HUGE:
        agent["padding"] = "x" * _HUGE_PADDING
    elif fault is Fault.BAD_SCHEMA:
        shards[0]["role"] = 42
    elif fault is Fault.WRONG_TYPES:
        datastore["node_id"] = 12
    routes: dict[str, _Route] = {AGENT_INFO: _response(200, _dumps(agent)),
                                 DATASTORE_INFO: _response(200, _dumps(datastore)),
                                 SHARDS: _response(200, _dumps({"shards": shards}))}
    if fault is Fault.NODE_DOWN:
        routes[DATASTORE_INFO] = routes[SHARDS] = _DATASTORE_DOWN
    elif fault is Fault.GARBAGE:
        routes = {path: _response(200, b'{"version": <<garbage') for path in routes}
    elif fault is Fault.WRONG_CONTENT_TYPE:
        routes[AGENT_INFO] = _response(200, _dumps(agent), "text/html; charset=utf-8")
    elif fault is Fault.AGENT_ERROR:
        routes[AGENT_INFO] = _error(500, "agent internal error")
    elif fault in _HOSTILE_AGENT_INFO:
        routes[AGENT_INFO] = _HOSTILE_AGENT_INFO[fault]()
    return routes


def _endless_chunked() -> _Endless:
    head = (b"HTTP/1.1 200 OK\r\nServer: replicante-agent-sim\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(b'{"version":'))
    return _Endless(head, _chunk(b" " * _STREAM_CHUNK))


def _reset_mid_body() -> _ResetMidBody:
    head = (b"HTTP/1.1 200 OK\r\nServer: replicante-agent-sim\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % _RESET_LENGTH)
    return _ResetMidBody(head + b'{"version":'.ljust(_RESET_SENT))


# fault -> builder of its agent info route (the faults that only change agent info)
_HOSTILE_AGENT_INFO: dict[Fault, Callable[[], _Route]] = {
    Fault.ENDLESS_CHUNKED: _endless_chunked,
    Fault.DEEP_NESTING: lambda: _response(200, b"[" * _DEEP_NESTING + b"]" * _DEEP_NESTING),
    Fault.NAN: lambda: _response(200, b'{"version":{"checkout":"x","number":NaN,"taint":"t"}}'),
    Fault.DUPLICATE_KEYS: lambda: _response(
        200, b'{"version":{"checkout":"x","number":"0.7.0","taint":"t"},'
             b'"version":{"checkout":"y","number":"0.8.0","taint":"t"}}'),
    Fault.INVALID_UTF8: lambda: _response(200, b'{"version":{"checkout":"bad\xff","number":"0.7.0","taint":"t"}}'),
    Fault.REDIRECT: lambda: _response(302, content_type=None, extra=f"Location: {_REDIRECT_TO}\r\n"),
    Fault.SERVICE_UNAVAILABLE: lambda: _error(503, "agent overloaded", "ServiceUnavailable",
                                              "Retry-After: 30\r\n"),
    Fault.RESET_MID_BODY: _reset_mid_body,
    Fault.GZIP_BOMB: lambda: _response(200, _gzip_bomb(_BOMB_SPACES), extra="Content-Encoding: gzip\r\n"),
}


@dataclasses.dataclass(eq=False)
class _Conn:
    sock: socket.socket
    thread: threading.Thread | None = None


@dataclasses.dataclass(frozen=True)
class _Request:
    method: str
    path: str  # the request target as received, without the query: not percent-decoded
    close: bool
    body_length: int  # -1: a body we will not read (the connection closes after the response)
    content_length: int = 0  # as announced (0 when absent)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)  # lower-case names


class _BadRequest(Exception):
    """The client sent something that is not HTTP/1.x."""


def _read_request(rfile: Callable[[int], bytes]) -> _Request | None:
    """Read one request head (and size its body); None on a clean end of stream."""
    line = rfile(_MAX_LINE + 1)
    if line in (b"\r\n", b"\n"):  # one stray empty line is tolerated (RFC 9112 2.2)
        line = rfile(_MAX_LINE + 1)
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(line) > _MAX_LINE or len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest
    method, target, version = parts
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        line = rfile(_MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise _BadRequest
        name, value = name.strip().lower(), value.strip()
        # a repeated field is one comma-separated list (RFC 9110 5.3), as a verifier must see it
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    else:
        raise _BadRequest
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    lengths = {part.strip() for part in headers.get("content-length", "0").split(",")}
    length = lengths.pop() if len(lengths) == 1 else ""  # identical repeats are one (RFC 9112 6.3)
    if not length.isdigit():
        raise _BadRequest
    content_length = body_length = int(length)
    if "transfer-encoding" in headers or "expect" in headers or body_length > _MAX_DISCARD:
        body_length, close = -1, True
    return _Request(method, target.split("?", 1)[0], close, body_length, content_length, headers)


# --- actions ----------------------------------------------------------------------------------

NEW, RUNNING, DONE, FAILED = "NEW", "RUNNING", "DONE", "FAILED"
FORGOTTEN = "FORGOTTEN"  # not an agent state: the node dropped the action (the caller sees it LOST)
_REQUESTERS = frozenset({"AGENT_API", "CORE_API"})
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})",
                      re.ASCII)
_SCHEDULE_FIELDS = ("action_id", "args", "created_ts", "requester")

# verifier(method, path, headers, body): True accepts a schedule request; False, None, a reason
# string, any other value or an exception refuses it with 401 (fail closed).
Verifier = Callable[[str, str, Mapping[str, str], bytes], Union[bool, str, None]]


def _rfc3339(timestamp: float) -> str:
    """Whole-second RFC 3339 in UTC, as agents write timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


class _InvalidArgs(ValueError):
    """A schedule request body the agent refuses (400, kind InvalidArgs)."""


@dataclasses.dataclass(frozen=True)
class _Schedule:
    """A validated schedule request body."""

    action_id: str  # lower-case hyphenated UUID
    args: Any
    created_ts: str  # normalised to whole seconds, UTC
    requester: str


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key in object")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_timestamp(value: object) -> str:
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    try:
        if match is None:
            raise ValueError
        date, clock, zone = match.groups()
        parsed = datetime.datetime.fromisoformat(f"{date}T{clock}{'+00:00' if zone in 'Zz' else zone}")
    except ValueError:
        raise _InvalidArgs("created_ts must be an RFC 3339 timestamp") from None
    return _rfc3339(parsed.timestamp())


def _parse_schedule(content_type: str, body: bytes) -> _Schedule:
    """Validate a schedule request body strictly: a JSON object with the four fields."""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise _InvalidArgs("Content-Type must be application/json")
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError included
        raise _InvalidArgs(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _InvalidArgs("request body must be a JSON object")
    missing = [name for name in _SCHEDULE_FIELDS if name not in doc]
    if missing:
        raise _InvalidArgs("missing field(s): " + ", ".join(missing))
    action_id, requester = doc["action_id"], doc["requester"]
    if not isinstance(action_id, str) or not _UUID.fullmatch(action_id):
        raise _InvalidArgs("action_id must be a UUID")
    if not isinstance(requester, str) or requester not in _REQUESTERS:
        raise _InvalidArgs("requester must be one of " + ", ".join(sorted(_REQUESTERS)))
    return _Schedule(str(uuid.UUID(action_id)), doc["args"], _parse_timestamp(doc["created_ts"]), requester)


@dataclasses.dataclass
class _Action:
    """One stored action of one node."""

    id: str
    kind: str
    args: Any
    created_ts: str
    requester: str
    scheduled_ts: str
    headers: dict[str, str]  # of the schedule request: recorded for tests, not served
    state: str = NEW
    state_payload: dict[str, object] | None = None
    finished_ts: str | None = None
    history: list[dict[str, object]] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "state": self.state}

    def info(self) -> dict[str, object]:
        action = {"args": self.args, "created_ts": self.created_ts, "finished_ts": self.finished_ts,
                  "headers": {}, "id": self.id, "kind": self.kind, "requester": self.requester,
                  "scheduled_ts": self.scheduled_ts, "state": self.state, "state_payload": self.state_payload}
        return {"action": action, "history": self.history}


@dataclasses.dataclass
class _ActionBook:
    """One node's actions, and the record tests read (posts, executions, states reached)."""

    stored: dict[str, _Action] = dataclasses.field(default_factory=dict)  # in scheduling order
    finished: list[str] = dataclasses.field(default_factory=list)  # DONE/FAILED ids, finishing order
    posts: int = 0
    executions: dict[str, int] = dataclasses.field(default_factory=dict)
    reached: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # FORGOTTEN included

    def enter(self, action: _Action, state: str, payload: dict[str, object] | None, timestamp: str) -> None:
        action.state, action.state_payload = state, payload
        action.history.append({"action_id": action.id, "timestamp": timestamp, "state": state,
                               "state_payload": payload})
        self.reached.setdefault(action.id, []).append(state)


class _ActionEngine:
    """The actions API of every node of one simulator, and its one executor thread.

    One Condition guards every node's book: request handlers store actions and notify it,
    the executor waits on it for the next due step, `wait_for_state` waits on it too.
    """

    def __init__(self, enabled: bool, step_seconds: float, verifier: Verifier | None,
                 stop: threading.Event) -> None:
        self.enabled = enabled
        self._step = step_seconds
        self._verifier = verifier
        self._stop = stop
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, _ActionBook, str]] = []  # heap: (monotonic due, seq, book, id)
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="agentsim-actions", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Wake and join the executor; the shared stop event is already set."""
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    # request handling (connection threads)

    def route(self, book: _ActionBook, request: _Request, body: bytes) -> _Response:
        path, method = request.path, request.method
        if path.startswith(SCHEDULE_PREFIX) and method == "POST":
            with self._cond:
                book.posts += 1
        if not self.enabled:
            return _EMPTY_404
        if path.startswith(SCHEDULE_PREFIX) and len(path) > len(SCHEDULE_PREFIX):
            if method != "POST":
                return _POST_ONLY
            return self._schedule(book, path[len(SCHEDULE_PREFIX):], request, body)
        if path not in (ACTIONS_QUEUE, ACTIONS_FINISHED) and not path.startswith(ACTION_INFO_PREFIX):
            return _NOT_FOUND
        if method != "GET":
            return _NOT_ALLOWED
        with self._cond:
            if path == ACTIONS_QUEUE:
                reply: object = [a.summary() for a in book.stored.values() if a.state in (NEW, RUNNING)]
            elif path == ACTIONS_FINISHED:
                reply = [book.stored[action_id].summary() for action_id in reversed(book.finished)]
            else:
                action = book.stored.get(path[len(ACTION_INFO_PREFIX):].lower())
                if action is None:
                    return _EMPTY_404
                reply = action.info()
            return _response(200, _dumps(reply))

    def _schedule(self, book: _ActionBook, kind: str, request: _Request, body: bytes) -> _Response:
        """Size, then verification (the hook for signatures), then the body, then idempotency."""
        if "transfer-encoding" in request.headers:
            return _LENGTH_REQUIRED
        if request.content_length > MAX_ACTION_BODY:
            return _TOO_LARGE
        if request.body_length < 0:  # Expect: 100-continue, the body was not read
            return _EXPECTATION_FAILED
        if self._verifier is not None and not self._verified(request, body):
            return _UNAUTHORIZED
        try:
            schedule = _parse_schedule(request.headers.get("content-type", ""), body)
        except _InvalidArgs as exc:
            return _response(400, _dumps({"error": str(exc), "kind": "InvalidArgs"}))
        with self._cond:
            if schedule.action_id in book.stored:
                return _ALREADY_EXISTS
            now = _rfc3339(time.time())
            action = _Action(schedule.action_id, kind, schedule.args, schedule.created_ts,
                             schedule.requester, now, dict(request.headers))
            book.stored[action.id] = action
            book.enter(action, NEW, None, now)
            self._next_step(book, action.id)
        return _response(200, _dumps({"id": schedule.action_id}))

    def _verified(self, request: _Request, body: bytes) -> bool:
        assert self._verifier is not None
        try:
            verdict = self._verifier(request.method, request.path, dict(request.headers), body)
        except Exception as exc:  # fail closed: a verifier may refuse by raising
            verdict = f"verifier raised {exc!r}"
        if verdict is True:
            return True
        _log.info("agent-sim refused a schedule request to %s: %s", request.path, verdict or "not verified")
        return False

    # execution (the executor thread)

    def _next_step(self, book: _ActionBook, action_id: str) -> None:
        heapq.heappush(self._due, (time.monotonic() + self._step, next(self._seq), book, action_id))
        self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while not self._stop.is_set():
                delay = self._due[0][0] - time.monotonic() if self._due else None
                if delay is None or delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, book, action_id = heapq.heappop(self._due)
                try:
                    self._advance(book, action_id)
                except Exception:  # a bug in the simulator itself
                    _log.exception("agent-sim action executor failed on %s", action_id)
                self._cond.notify_all()

    def _advance(self, book: _ActionBook, action_id: str) -> None:
        """NEW -> RUNNING (one execution); RUNNING -> DONE, FAILED, or forgotten, by kind."""
        action = book.stored.get(action_id)
        if action is None:
            return
        now = _rfc3339(time.time())
        if action.state == NEW:
            book.executions[action_id] = book.executions.get(action_id, 0) + 1
            book.enter(action, RUNNING, None, now)
            self._next_step(book, action_id)
        elif action.kind.endswith("test.forget"):
            del book.stored[action_id]
            book.reached[action_id].append(FORGOTTEN)
        else:
            failed = action.kind.endswith("test.fail")
            action.finished_ts = now
            book.enter(action, FAILED if failed else DONE, {"error": "simulated failure"} if failed else None, now)
            book.finished.append(action_id)

    # the record (any thread)

    def posts(self, book: _ActionBook) -> int:
        with self._cond:
            return book.posts

    def actions(self, book: _ActionBook) -> list[dict[str, Any]]:
        with self._cond:
            return [{"id": a.id, "kind": a.kind, "args": copy.deepcopy(a.args), "state": a.state,
                     "headers": dict(a.headers)} for a in book.stored.values()]

    def executions(self, book: _ActionBook) -> dict[str, int]:
        with self._cond:
            return dict(book.executions)

    def wait_for_state(self, book: _ActionBook, action_id: str, state: str, timeout: float) -> bool:
        action_id = action_id.lower()
        with self._cond:
            return self._cond.wait_for(lambda: state in book.reached.get(action_id, ()), timeout)



@dataclasses.dataclass
class _Agent:
    spec: NodeSpec
    listener: socket.socket
    url: str
    routes: dict[str, _Route]
    seen: int = 0
    book: _ActionBook = dataclasses.field(default_factory=_ActionBook)  # guarded by the engine


class AgentSim:
    """HTTPS agents for `nodes` on loopback; a context manager (start/stop)."""

    def __init__(self, nodes: Sequence[NodeSpec], ssl_context: ssl.SSLContext | None,
                 host: str = "127.0.0.1", drip_seconds: float = 1.0, actions: bool = True,
                 action_seconds: float = 0.2, verifier: Verifier | None = None) -> None:
        """`ssl_context` None serves plain HTTP, as an agent behind a TLS-terminating nginx.

        `actions` False: every /actions/* path answers 404 with an empty body. Actions take
        `action_seconds` per step (NEW -> RUNNING -> final). `verifier(method, path, headers,
        body)` is asked before a schedule request is stored: anything but True refuses it (401).
        """
        if action_seconds < 0:
            raise ValueError("action_seconds must not be negative")
        if verifier is not None and not callable(verifier):
            raise TypeError("verifier must be callable")
        self._nodes = list(nodes)
        self._context = ssl_context
        self._host = host
        self._drip_seconds = drip_seconds
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._agents: list[_Agent] = []
        self._by_url: dict[str, _Agent] = {}
        self._conns: set[_Conn] = set()
        self._acceptor: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._engine = _ActionEngine(actions, action_seconds, verifier, self._stop)

    def start(self) -> AgentSim:
        """Bind one ephemeral port per node and start the acceptor thread."""
        if self._acceptor is not None or self._stop.is_set():
            raise RuntimeError("AgentSim can be started once")
        _ensure_fd_limit(len(self._nodes) + 512)
        bind_host = "127.0.0.1" if self._host == "localhost" else self._host
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        url_host = f"[{self._host}]" if ":" in self._host else self._host
        primaries: set[str] = set()
        try:
            for spec in self._nodes:
                listener = socket.socket(family, socket.SOCK_STREAM)
                self._agents.append(_Agent(spec, listener, "", {}))
                listener.bind((bind_host, 0))
                listener.listen(128)
                listener.setblocking(False)
                agent = self._agents[-1]
                scheme = "http" if self._context is None else "https"
                agent.url = f"{scheme}://{url_host}:{listener.getsockname()[1]}"
                agent.routes = _routes(spec, spec.cluster_id not in primaries)
                primaries.add(spec.cluster_id)
                self._by_url[agent.url] = agent
        except BaseException:
            self._close_sockets()
            raise
        self._engine.start()
        self._acceptor = threading.Thread(target=self._accept_loop, name="agentsim-acceptor", daemon=True)
        self._acceptor.start()
        return self

    @property
    def agents(self) -> list[tuple[NodeSpec, str]]:
        """Each node with its agent URL (after start)."""
        if self._acceptor is None:
            raise RuntimeError("AgentSim is not started")
        return [(agent.spec, agent.url) for agent in self._agents]

    def requests_seen(self, url: str) -> int:
        """HTTP requests received by the agent at `url`."""
        with self._lock:
            return self._agent(url).seen

    def schedule_posts(self, url: str) -> int:
        """POSTs to /actions/schedule/* the agent at `url` received: duplicates and refused ones too."""
        return self._engine.posts(self._agent(url).book)

    def actions(self, url: str) -> list[dict[str, Any]]:
        """The actions the agent at `url` stores, in scheduling order: id, kind, args, state and
        the headers of the schedule request (lower-case names; repeats joined with ", ")."""
        return self._engine.actions(self._agent(url).book)

    def executions(self, url: str) -> dict[str, int]:
        """Action id -> how many times the agent at `url` started executing it."""
        return self._engine.executions(self._agent(url).book)

    def wait_for_state(self, url: str, action_id: str, state: str, timeout: float) -> bool:
        """Wait until the action has reached `state` (NEW, RUNNING, DONE, FAILED, or FORGOTTEN
        once a test.forget action is dropped); False on timeout. Reached earlier counts too."""
        return self._engine.wait_for_state(self._agent(url).book, action_id, state, timeout)

    def _agent(self, url: str) -> _Agent:
        return self._by_url[url.rstrip("/")]

    def stop(self) -> None:
        """Close listeners and connections, wake handlers, join threads; idempotent."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            conns = list(self._conns)
        if self._acceptor is not None:
            self._wake_w.send(b"x")
            self._acceptor.join()
        self._close_sockets()
        for conn in conns:
            try:  # base-class shutdown on the fd: wakes a blocked read without touching SSL state
                socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)
            except OSError:
                pass
        self._engine.stop()
        deadline = time.monotonic() + 2.0
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> AgentSim:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _close_sockets(self) -> None:
        for sock in [agent.listener for agent in self._agents] + [self._wake_r, self._wake_w]:
            sock.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            for agent in self._agents:
                selector.register(agent.listener, selectors.EVENT_READ, agent)
            while not self._stop.is_set():
                for key, _ in selector.select():
                    if key.data is not None:
                        self._accept(key.data)

    def _accept(self, agent: _Agent) -> None:
        try:
            raw, _ = agent.listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                _log.warning("agent-sim cannot accept on %s: %s", agent.url, exc)
                self._stop.wait(0.1)  # back off instead of spinning on a ready listener
            return
        raw.settimeout(IDLE_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stall after tickets
        conn = _Conn(raw)
        conn.thread = threading.Thread(target=self._serve, args=(conn, agent),
                                       name=f"agentsim-{agent.spec.node_id}", daemon=True)
        with self._lock:
            if self._stop.is_set():
                raw.close()
                return
            self._conns.add(conn)
        conn.thread.start()

    def _serve(self, conn: _Conn, agent: _Agent) -> None:
        """One connection: TLS handshake, then requests until close; client faults end it silently."""
        try:
            if agent.spec.fault is Fault.TLS_STALL:
                _hold(conn.sock)  # not a byte of TLS, not even a ServerHello
                return
            if self._context is not None:
                with self._lock:  # wrapping detaches the raw socket: swap it where stop() looks
                    if self._stop.is_set():
                        return
                    conn.sock = self._context.wrap_socket(conn.sock, server_side=True,
                                                          do_handshake_on_connect=False)
                conn.sock.do_handshake()
            with conn.sock.makefile("rb") as rfile:
                self._exchange(conn.sock, rfile, agent)
        except (OSError, ValueError):
            pass  # disconnects, TLS failures, timeouts, writes after stop(): that connection's end
        except Exception:  # a bug in the simulator itself
            _log.exception("agent-sim connection handler failed for %s", agent.url)
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.sock.close()

    def _exchange(self, sock: socket.socket, rfile: BinaryIO, agent: _Agent) -> None:
        """Answer requests on one connection until it closes."""
        while not self._stop.is_set():
            try:
                request = _read_request(rfile.readline)
            except _BadRequest:
                sock.sendall(_BAD_REQUEST.wire(close=True))
                return
            if request is None:
                return
            with self._lock:
                agent.seen += 1
            if agent.spec.fault is Fault.HANGING:
                _hold(sock)
                return
            body = rfile.read(request.body_length) if request.body_length > 0 else b""
            if len(body) < request.body_length:
                return
            response = self._route(agent, request, body)
            if not isinstance(response, _Response):
                response.serve(sock, self._stop)  # a hostile answer owns the rest of the connection
                return
            data = response.wire(request.close, head_only=request.method == "HEAD")
            if agent.spec.fault is Fault.SLOW:
                if not self._drip(sock, data):
                    return
            else:
                sock.sendall(data)
            if request.close:
                if request.body_length < 0:
                    _linger(sock)
                return

    def _route(self, agent: _Agent, request: _Request, body: bytes) -> _Route:
        if request.path.startswith(ACTIONS_PREFIX):  # dynamic; everything else is pre-serialised
            return self._engine.route(agent.book, request, body)
        response = agent.routes.get(request.path)
        if response is None:
            return _NOT_FOUND
        return response if request.method == "GET" else _NOT_ALLOWED

    def _drip(self, sock: socket.socket, data: bytes) -> bool:
        """Send one byte every drip_seconds; False when stop() interrupted it."""
        view = memoryview(data)
        for i in range(len(view)):
            if i and self._stop.wait(self._drip_seconds):
                return False
            sock.sendall(view[i:i + 1])
        return True


def _linger(sock: socket.socket) -> None:
    """Lingering close (RFC 9112 9.6) after answering without reading the body: send FIN, then
    drop what the client still sends, so closing with unread data does not RST the answer away."""
    socket.socket.shutdown(sock, socket.SHUT_WR)  # on the fd: no TLS state involved
    sock.settimeout(_LINGER_SECONDS)
    deadline, received = time.monotonic() + _LINGER_SECONDS, 0
    while received < _MAX_DISCARD and time.monotonic() < deadline:
        data = socket.socket.recv(sock, 65536)  # raw TLS records: only counted, never decrypted
        if not data:
            return
        received += len(data)


def _hold(sock: socket.socket) -> None:
    """Read and drop until the client closes, or stop() shuts the socket down."""
    sock.settimeout(None)
    while sock.recv(4096):
        pass


def _ensure_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards the hard one when thousands of ports are bound."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def throwaway_ca(directory: pathlib.Path) -> tuple[pathlib.Path, ssl.SSLContext]:
    """A fresh trustme CA: writes directory/ca.pem, returns it and a server context for loopback."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_pem = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return ca_pem, context


def discovery_ini(agents: Iterable[tuple[NodeSpec, str]]) -> str:
    """INI discovery text: one [cluster:ID] section per cluster, in order of first appearance."""
    clusters: dict[str, tuple[list[str], list[str]]] = {}
    for spec, url in agents:
        urls, names = clusters.setdefault(spec.cluster_id, ([], []))
        urls.append(url)
        if spec.display_name and not names:
            names.append(spec.display_name)
    sections = []
    for cluster_id, (urls, names) in clusters.items():
        lines = [f"[cluster:{cluster_id}]"] + [f"display_name = {name}" for name in names]
        sections.append("\n".join(lines + ["agents = " + ", ".join(urls)]) + "\n")
    return "\n".join(sections)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the `agent-sim` verb."""
    parser.add_argument("--clusters", type=int, default=3, help="number of clusters (default 3)")
    parser.add_argument("--nodes-per-cluster", type=int, default=3, help="nodes per cluster (default 3)")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=COUNT",
                        help="give COUNT nodes a fault, repeatable; NAME in: "
                        + ", ".join(f.value for f in Fault if f is not Fault.HEALTHY))
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--out", type=pathlib.Path, required=True,
                        help="directory for ca.pem and discovery.ini")
    parser.add_argument("--drip-seconds", type=float, default=1.0,
                        help="seconds between bytes of a slow agent (default 1.0)")
    parser.add_argument("--no-actions", dest="actions", action="store_false",
                        help="agents with actions disabled: 404 with an empty body on /actions/*")
    parser.add_argument("--action-seconds", type=float, default=0.2,
                        help="seconds per action step, NEW -> RUNNING -> DONE (default 0.2)")


def _parse_faults(values: Iterable[str]) -> dict[Fault, int]:
    faults: dict[Fault, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        try:
            fault = Fault(name.strip().lower().replace("-", "_"))
        except ValueError:
            raise ValueError(f"--fault {value!r}: unknown fault {name!r}; expected one of "
                             + ", ".join(f.value for f in Fault)) from None
        if not sep or not count.strip().isdigit():
            raise ValueError(f"--fault {value!r}: expected NAME=COUNT with COUNT a whole number")
        faults[fault] = faults.get(fault, 0) + int(count)
    return faults


def main(args: argparse.Namespace) -> int:
    """The `agent-sim` verb: serve a simulated fleet until SIGINT/SIGTERM."""
    try:
        nodes = fleet(args.clusters, args.nodes_per_cluster, _parse_faults(args.fault))
        if args.drip_seconds <= 0:
            raise ValueError("--drip-seconds must be positive")
        if args.action_seconds < 0:
            raise ValueError("--action-seconds must not be negative")
    except ValueError as exc:
        print(f"agent-sim: {exc}", file=sys.stderr)
        return 2
    try:
        ca_pem, context = throwaway_ca(args.out)
        sim = AgentSim(nodes, context, host=args.host, drip_seconds=args.drip_seconds,
                       actions=args.actions, action_seconds=args.action_seconds).start()
    except OSError as exc:
        print(f"agent-sim: cannot start: {exc}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stopping.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        discovery = args.out / "discovery.ini"
        discovery.write_text(discovery_ini(sim.agents))
        for spec, url in sim.agents:
            print(f"{url} cluster={spec.cluster_id} node={spec.node_id} fault={spec.fault.value}")
        print(f"CA certificate: {ca_pem}")
        print(f"discovery file: {discovery}", flush=True)
        stopping.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sim.stop()
    return 0
