"""The HTTP listener both services share (status API and gateway).

Requests are handled by the stdlib's `BaseHTTPRequestHandler` subclasses, but no handler
thread ever waits for a client. One selector thread accepts connections, does the TLS
handshake (non-blocking) and reads each request whole: request line, headers and, when
`Content-Length` announces one within `max_body`, the body. Only a complete request goes to
a handler thread (at most `workers`, started as needed). So:

- a request must arrive whole within `deadline` seconds of the accept (or of the previous
  response on a kept-alive connection), TLS handshake included; a client that does not make
  it is dropped (refusal `deadline`), however slowly it drips;
- at most `max_connections` connections are open, and one peer address (an IPv4 address,
  an IPv6 /64) holds at most `max_connections // peer_share` of them (refusal `peer_share`;
  `capacity` when the listener is full): one abusive address cannot starve the others;
- a dripping client costs a socket and a buffer, never a thread;
- every refusal is counted (`on_refusal(reason)`) and logged at most once per `LOG_EVERY`
  seconds per reason, with how many were refused meanwhile;
- the listen backlog (`BACKLOG`) absorbs bursts of connections.

A client that goes away, resets, stalls past a deadline or closes TLS without close_notify
is not an error (debug log). Every response carries `X-Content-Type-Options: nosniff` and a
`Content-Security-Policy` (`default-src 'none'` unless the handler sent its own), and the
`Server` header never names the Python version.
"""
from __future__ import annotations

import collections
import errno
import gzip
import heapq
import ipaddress
import itertools
import json
import logging
import re
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Callable, Iterable, Optional

from ..errors import PollerError, os_problem

log = logging.getLogger(__name__)
MAX_CONNECTIONS = 256  # open connections of one listener, all peers together
PEER_SHARE = 8  # one peer address holds at most MAX_CONNECTIONS // PEER_SHARE connections
WORKERS = 64  # handler threads, started as needed: more than one peer's share
REQUEST_DEADLINE = 10.0  # seconds from accept (or the previous response) to a whole request, TLS handshake included
WRITE_TIMEOUT = 30.0  # seconds one write of a response may take (a client that does not read)
BACKLOG = 1024  # listen backlog (the kernel caps it at net.core.somaxconn)
MAX_HEAD = 64 * 1024  # request line and headers
DEFAULT_MAX_BODY = 64 * 1024  # bodies up to this are read before a handler runs; larger ones are the handler's call
LOG_EVERY = 10.0  # seconds between two log lines about refusals of one reason
ACCEPT_PAUSE = 1.0  # seconds the listener stops accepting after running out of file descriptors
REFUSAL_REASONS = ("capacity", "peer_share", "deadline", "too_large", "tls_handshake", "fd_limit")
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
GZIP_MIN = 4096
DIGITS = re.compile(r"[0-9]{1,12}")  # a Content-Length (str.isdigit() also takes "²")

_HEAD_END = re.compile(rb"\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"^content-length:[ \t]*([0-9]{1,12})[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_NAMED = re.compile(rb"^(content-length|transfer-encoding|expect)[ \t]*:", re.IGNORECASE | re.MULTILINE)
_LINGER_RESET = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT for refused connections
_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_TOO_LARGE_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_GONE = (ConnectionError, TimeoutError, ssl.SSLError)  # the client went away, stalled or broke TLS: not our error


def peer_key(address: Any) -> str:
    """The address whose connections share one fair share: an IPv4 address, an IPv6 /64."""
    host = str(address[0]) if isinstance(address, tuple) else str(address)
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


def _expected_body(head: bytes, max_body: int) -> int:
    """How many body bytes to read before the handler runs: the Content-Length when it is the
    only one, within `max_body`, with no Transfer-Encoding and no Expect (the handler answers
    those itself, reading what it wants under the same deadline); else 0."""
    named = [m.group(1).lower() for m in _NAMED.finditer(head)]
    if named != [b"content-length"]:
        return 0
    match = _CONTENT_LENGTH.search(head)
    if match is None:
        return 0
    length = int(match.group(1))
    return length if length <= max_body else 0


class Refusals:
    """Counts refusals (`count(reason)`) and logs them at a bounded rate: a line for the first
    refusal of a reason, then at most one line per `every` seconds saying how many were
    refused since the previous line."""

    def __init__(self, name: str, count: Callable[[str], None], every: float = LOG_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self._name, self._count, self._every, self._clock = name, count, every, clock
        self._lock = threading.Lock()
        self._logged: dict[str, float] = {}  # reason -> when its latest line was written
        self._held: dict[str, list] = {}  # reason -> [refusals since that line, the latest peer, its detail]

    def refused(self, reason: str, peer: str, detail: str = "") -> None:
        self._count(reason)
        now = self._clock()
        with self._lock:
            held = self._held.setdefault(reason, [0, peer, detail])
            held[0] += 1
            held[1], held[2] = peer, detail
            last = self._logged.get(reason)
            if last is not None and now - last < self._every:
                return
            del self._held[reason]
            self._logged[reason] = now
        self._line(reason, held, None if last is None else now - last)

    def flush(self) -> Optional[float]:
        """Write the lines that are due; when (on `clock`) the next one is, or None."""
        now, due, lines = self._clock(), None, []
        with self._lock:
            for reason in list(self._held):
                at = self._logged[reason] + self._every
                if at <= now:
                    lines.append((reason, self._held.pop(reason), now - self._logged[reason]))
                    self._logged[reason] = now
                else:
                    due = at if due is None else min(due, at)
        for reason, held, elapsed in lines:
            self._line(reason, held, elapsed)
        return due

    def _line(self, reason: str, held: list, elapsed: Optional[float]) -> None:
        count, peer, detail = held
        detail = f" ({detail})" if detail else ""
        if elapsed is None:
            log.warning("%s: refused a connection from %s: %s%s; further refusals are summarised every %.0f s",
                        self._name, peer, reason, detail, self._every)
        else:
            log.warning("%s: refused %d connection%s in the last %.0f s: %s, the latest from %s%s",
                        self._name, count, "" if count == 1 else "s", elapsed, reason, peer, detail)


class _Deadline(TimeoutError):
    """The request did not arrive whole before its deadline."""


class _Connection:
    """One client connection: its socket, what was read of it, its deadline.

    Handlers get it as their `request`: `makefile("rb")` is the reader over what the
    selector thread read (and, past that, the socket, until the deadline); `sendall` writes
    to the socket with WRITE_TIMEOUT."""

    __slots__ = ("sock", "address", "peer", "buffer", "deadline", "handshaking", "served", "scanned", "need",
                 "events", "tls", "late")

    def __init__(self, sock: socket.socket, address: Any, peer: str, deadline: float, tls: bool):
        self.sock, self.address, self.peer, self.deadline = sock, address, peer, deadline
        self.buffer = bytearray()
        self.handshaking = self.tls = tls
        self.served = 0  # requests answered on this connection
        self.scanned = 0  # how far the buffer was searched for the end of the head
        self.need: Optional[int] = None  # bytes of the current request (head + body to read ahead), once known
        self.events = 0
        self.late = False  # a handler's read ran into the deadline (the handler then closes)

    # -- what a StreamRequestHandler uses of its request --------------------------------------

    def makefile(self, mode: str = "rb", buffering: int = -1) -> "_Reader":
        if "r" not in mode:
            raise ValueError("a listener connection only gives a reader; writes go through sendall")
        return _Reader(self)

    def sendall(self, data: Any) -> None:
        self.sock.sendall(data)

    def settimeout(self, timeout: Optional[float]) -> None:
        pass  # the listener owns the timeouts: the request deadline and WRITE_TIMEOUT

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def getpeername(self) -> Any:
        return self.address

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_more(self) -> bool:
        """Read more from the socket within the request deadline; False at end of stream."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.late = True
            raise _Deadline("the request did not arrive whole within its deadline")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError) as exc:
            self.late = True
            raise _Deadline("the request did not arrive whole within its deadline") from exc
        finally:
            self.sock.settimeout(WRITE_TIMEOUT)
        if not data:
            return False
        self.buffer += data
        return True


class _Reader:
    """A handler's `rfile`: the bytes the selector thread read, then the socket."""

    def __init__(self, connection: _Connection):
        self._connection = connection
        self.closed = False

    def readline(self, size: Optional[int] = -1) -> bytes:
        connection, start = self._connection, 0
        limit = -1 if size is None else size
        while True:
            buffer = connection.buffer
            end = buffer.find(b"\n", start)
            if end >= 0:
                taken = end + 1
            elif 0 <= limit <= len(buffer):
                taken = limit
            else:
                start = len(buffer)
                if connection.recv_more():
                    continue
                taken = len(buffer)
            if limit >= 0:
                taken = min(taken, limit)
            line = bytes(buffer[:taken])
            del buffer[:taken]
            return line

    def read(self, size: Optional[int] = -1) -> bytes:
        connection = self._connection
        while (size is None or size < 0 or len(connection.buffer) < size) and connection.recv_more():
            pass
        buffer = connection.buffer
        taken = len(buffer) if size is None or size < 0 else min(size, len(buffer))
        data = bytes(buffer[:taken])
        del buffer[:taken]
        return data

    def close(self) -> None:
        self.closed = True

    def flush(self) -> None:
        pass


class _Workers:
    """Up to `limit` daemon threads running `run(job)`, started as jobs arrive; idle ones
    wait on a Condition."""

    def __init__(self, limit: int, name: str, run: Callable[[Any], None]):
        self._limit, self._name, self._run = limit, name, run
        self._jobs: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._idle = self._started = 0
        self._closed = False

    def submit(self, job: Any) -> None:
        with self._ready:
            self._jobs.append(job)
            if self._idle >= len(self._jobs):
                self._ready.notify()
            elif self._started < self._limit:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self._name}-{self._started}", daemon=True).start()

    def close(self) -> list:
        """Stop every thread once its job is done; the jobs never started."""
        with self._ready:
            self._closed = True
            left, self._jobs = list(self._jobs), collections.deque()
            self._ready.notify_all()
        return left

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                if self._closed:
                    return
                job = self._jobs.popleft()
            self._run(job)


class SecureHeaders:
    """Mixed into every handler class a CountingServer runs: the hardening headers on every
    final response, a `Server` header without the Python version, one request per dispatch
    (the connection goes back to the selector thread between requests)."""

    _csp_sent = False
    _interim = False

    def handle(self: Any) -> None:
        self.close_connection = True
        self.handle_one_request()

    def version_string(self: Any) -> str:
        return str(self.server_version)

    def send_response_only(self: Any, code: int, message: Optional[str] = None) -> None:
        self._interim = code < 200
        super().send_response_only(code, message)  # type: ignore[misc]

    def send_header(self: Any, keyword: str, value: str) -> None:
        if keyword.lower() == "content-security-policy":
            self._csp_sent = True
        super().send_header(keyword, value)  # type: ignore[misc]

    def end_headers(self: Any) -> None:
        if not self._interim:
            super().send_header("X-Content-Type-Options", "nosniff")  # type: ignore[misc]
            if not self._csp_sent:
                super().send_header("Content-Security-Policy", DEFAULT_CSP)  # type: ignore[misc]
        self._csp_sent = self._interim = False
        super().end_headers()  # type: ignore[misc]


def _hardened(handler: type) -> type:
    """`handler` with SecureHeaders mixed in first."""
    if issubclass(handler, SecureHeaders):
        return handler
    return type(handler.__name__, (SecureHeaders, handler), {"__module__": handler.__module__,
                                                             "__qualname__": handler.__qualname__})


class ListenError(PollerError):
    """An address a listener cannot bind (or resolve); the message names it."""

    def __init__(self, address: tuple[str, int], problem: str):
        self.address = address
        host, port = address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(f"cannot listen on {shown}: {problem}")


def listen_family(address: tuple[str, int]) -> socket.AddressFamily:
    """The socket family `address` binds with: IPv4 when the host has an IPv4 address, else
    IPv6 (`::1`, `[::]`). ListenError when the host does not resolve."""
    host, port = address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ListenError(address, f"cannot resolve {host}: {os_problem(exc) if isinstance(exc, OSError) else exc}") from None
    families = [info[0] for info in infos]
    return socket.AF_INET if socket.AF_INET in families or not families else families[0]


class CountingServer(HTTPServer):
    """The listener (see the module's doc): `serve_forever()` runs the selector thread,
    `shutdown()` stops it, `server_close()` closes everything; request errors are logged and
    counted with `on_error`, refusals with `on_refusal(reason)`.

    `ssl_context` makes it an HTTPS listener (handshakes on the selector thread, under the
    request deadline). `name` names it in logs and thread names."""

    request_queue_size = BACKLOG
    on_error: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, address: Any, handler: Any, max_connections: int = MAX_CONNECTIONS, *,
                 name: str = "listener", ssl_context: Optional[ssl.SSLContext] = None,
                 on_refusal: Optional[Callable[[str], None]] = None, max_body: int = DEFAULT_MAX_BODY,
                 deadline: float = REQUEST_DEADLINE, peer_share: int = PEER_SHARE, workers: int = WORKERS):
        self.address_family = listen_family((address[0], address[1]))
        super().__init__(address, _hardened(handler), bind_and_activate=False)
        try:
            self.server_bind()
            self.server_activate()
        except OSError as exc:
            self.socket.close()
            raise ListenError((address[0], address[1]), os_problem(exc)) from None
        self.name = name
        self.deadline = deadline
        self.max_body = max_body
        self.max_connections = max_connections
        self.peer_limit = max(1, max_connections // peer_share)
        self.refusals = Refusals(name, on_refusal or (lambda reason: None))
        self._context = ssl_context
        self._lock = threading.Lock()  # guards the counts below, _returned and the stop flags
        self._open = 0
        self._peers: dict[str, int] = {}
        self._connections: set[_Connection] = set()
        self._returned: list[_Connection] = []  # kept-alive connections handed back by handler threads
        self._stopping = self._running = False
        self._done = threading.Event()
        self._reading: dict[_Connection, None] = {}  # the selector thread's own, in accept order
        self._deadlines: list[tuple[float, int, _Connection]] = []
        self._order = itertools.count()
        self._accept_paused_until: Optional[float] = None
        self._workers = _Workers(workers, name.replace(" ", "-"), self._serve)
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self.socket.setblocking(False)
        self._selector.register(self.socket, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)

    # -- lifecycle ------------------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        with self._lock:
            if self._stopping:
                return
            self._running = True
        try:
            while not self._stopping:
                for key, _ in self._selector.select(self._wait()):
                    if key.data is None:
                        self._accept()
                    elif key.data is self._wake_r:
                        self._drain_wake()
                    elif key.data in self._reading:
                        self._ready(key.data)
                self._take_returned()
                self._expire()
                if self._accept_paused_until is not None and time.monotonic() >= self._accept_paused_until:
                    self._accept_paused_until = None
                    self._selector.register(self.socket, selectors.EVENT_READ, None)
        finally:
            self._done.set()

    def shutdown(self) -> None:
        """Stop serve_forever (and wait for it, when it runs)."""
        with self._lock:
            self._stopping = True
            running = self._running
        self._wake()
        if running:
            self._done.wait()

    def server_close(self) -> None:
        """Close the listener and every connection (handler threads blocked on one see it fail)."""
        super().server_close()
        with self._lock:
            self._stopping = True
            connections, returned, self._returned = list(self._connections), self._returned, []
        for connection in connections:
            try:
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for connection in [*self._workers.close(), *returned, *self._reading]:
            self._close(connection)  # handler threads close their own
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, _GONE):
            log.debug("%s: client %s went away: %r", self.name, client_address, error)
            return
        log.exception("%s: request from %s failed", self.name, client_address)
        self.on_error()

    # -- the selector thread ----------------------------------------------------------------------

    def _wait(self) -> Optional[float]:
        """Seconds until the next deadline, refusal summary or end of an accept pause."""
        now = time.monotonic()
        candidates = [self.refusals.flush(), self._accept_paused_until]
        while self._deadlines and self._stale(self._deadlines[0]):
            heapq.heappop(self._deadlines)
        if self._deadlines:
            candidates.append(self._deadlines[0][0])
        due = [at for at in candidates if at is not None]
        return max(0.0, min(due) - now) if due else None

    def _stale(self, entry: tuple[float, int, _Connection]) -> bool:
        return entry[2] not in self._reading or entry[2].deadline != entry[0]

    def _accept(self) -> None:
        for _ in range(128):  # a bounded batch: reading goes on during a flood of connections
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS:  # the connection stays in the backlog; try again soon
                    self._selector.unregister(self.socket)
                    self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
                    self.refusals.refused("fd_limit", "(not accepted)", exc.strerror or str(exc))
                    return
                log.debug("%s: accept failed: %r", self.name, exc)
                continue
            peer = peer_key(address)
            with self._lock:
                if self._open >= self.max_connections:
                    reason = "capacity"
                elif self._peers.get(peer, 0) >= self.peer_limit:
                    reason = "peer_share"
                else:
                    reason = ""
                    self._open += 1
                    self._peers[peer] = self._peers.get(peer, 0) + 1
            if reason:
                self._reset(sock)
                self.refusals.refused(reason, peer, f"{self.max_connections} connections open" if reason == "capacity"
                                      else f"{self.peer_limit} connections open from that address")
                continue
            self._admit(sock, address, peer)

    def _admit(self, sock: socket.socket, address: Any, peer: str) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as exc:
            log.debug("%s: connection from %s failed at once: %r", self.name, address, exc)
            self._forget(peer)
            sock.close()
            return
        connection = _Connection(sock, address, peer, time.monotonic() + self.deadline, self._context is not None)
        with self._lock:
            self._connections.add(connection)
        self._watch(connection, selectors.EVENT_READ)
        self._ready(connection)  # a client that wrote at once is served without another wake-up

    def _watch(self, connection: _Connection, events: int) -> None:
        if connection not in self._reading:
            self._reading[connection] = None
            self._selector.register(connection.sock, events, connection)
            heapq.heappush(self._deadlines, (connection.deadline, next(self._order), connection))
        elif connection.events != events:
            self._selector.modify(connection.sock, events, connection)
        connection.events = events

    def _unwatch(self, connection: _Connection) -> None:
        if self._reading.pop(connection, 0) is None:
            self._selector.unregister(connection.sock)

    def _ready(self, connection: _Connection) -> None:
        """The socket is ready: go on with the handshake, read, dispatch a whole request."""
        sock = connection.sock
        try:
            if connection.handshaking:
                sock.do_handshake()  # type: ignore[attr-defined]
                connection.handshaking = False
            limit = MAX_HEAD + self.max_body + 1
            while len(connection.buffer) < limit:
                data = sock.recv(65536)
                if not data:
                    log.debug("%s: %s closed the connection", self.name, connection.address)
                    return self._close(connection)
                connection.buffer += data
                if not (connection.tls and sock.pending()) and len(data) < 65536:  # type: ignore[attr-defined]
                    break
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLWantWriteError:
            return self._watch(connection, selectors.EVENT_WRITE)
        except (BlockingIOError, InterruptedError):
            pass
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as exc:
            log.debug("%s: %s went away: %r", self.name, connection.address, exc)
            return self._close(connection)
        except ssl.SSLError as exc:
            if connection.handshaking:
                self.refusals.refused("tls_handshake", connection.peer, exc.reason or str(exc))
            else:
                log.debug("%s: TLS from %s failed: %r", self.name, connection.address, exc)
            return self._close(connection)
        except OSError as exc:
            log.debug("%s: reading from %s failed: %r", self.name, connection.address, exc)
            return self._close(connection)
        self._watch(connection, selectors.EVENT_READ)
        self._check(connection)

    def _check(self, connection: _Connection) -> None:
        """Dispatch the request when it is whole; refuse a head over MAX_HEAD."""
        buffer = connection.buffer
        if connection.need is None:
            end = _HEAD_END.search(buffer, max(0, connection.scanned - 2))
            if end is None:
                connection.scanned = len(buffer)
                if len(buffer) > MAX_HEAD:
                    self._drop(connection, "too_large", _TOO_LARGE_431, f"request head over {MAX_HEAD} bytes")
                return
            connection.need = end.end() + _expected_body(bytes(buffer[:end.end()]), self.max_body)
        if len(buffer) >= connection.need:
            self._unwatch(connection)
            self._workers.submit(connection)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            entry = heapq.heappop(self._deadlines)
            if self._stale(entry):
                continue
            connection = entry[2]
            if connection.served and not connection.buffer:
                log.debug("%s: idle connection from %s closed", self.name, connection.address)
                self._close(connection)
            else:
                what = "TLS handshake" if connection.handshaking else f"request ({len(connection.buffer)} bytes read)"
                self._drop(connection, "deadline", None if connection.handshaking else _TIMEOUT_408,
                           f"{what} not whole within {self.deadline:g} s")

    def _drop(self, connection: _Connection, reason: str, answer: Optional[bytes], detail: str) -> None:
        """Refuse a connection being read: a last answer if it can go at once, then close."""
        if answer is not None:
            try:
                connection.sock.send(answer)
            except OSError:
                pass
        self.refusals.refused(reason, connection.peer, detail)
        self._close(connection)

    def _take_returned(self) -> None:
        with self._lock:
            returned, self._returned = self._returned, []
        for connection in returned:
            try:
                connection.sock.setblocking(False)
            except OSError:
                self._close(connection)
                continue
            self._watch(connection, selectors.EVENT_READ)
            if connection.tls and connection.sock.pending():  # type: ignore[attr-defined]
                self._ready(connection)
            else:
                self._check(connection)  # a pipelined request may be whole already

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway; closed: nobody to wake

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # -- connections, on any thread ---------------------------------------------------------------

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        sock.close()

    def _forget(self, peer: str) -> None:
        with self._lock:
            self._open -= 1
            left = self._peers[peer] - 1
            if left:
                self._peers[peer] = left
            else:
                del self._peers[peer]

    def _close(self, connection: _Connection) -> None:
        if connection in self._reading:
            self._unwatch(connection)
        with self._lock:
            if connection not in self._connections:
                return
            self._connections.discard(connection)
        self._forget(connection.peer)
        try:
            connection.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        connection.sock.close()

    # -- handler threads --------------------------------------------------------------------------

    def _serve(self, connection: _Connection) -> None:
        keep = False
        try:
            connection.sock.settimeout(WRITE_TIMEOUT)
            keep = not self.RequestHandlerClass(connection, connection.address, self).close_connection
        except Exception:
            self.handle_error(connection, connection.address)
        if connection.late:  # the body came too slowly for the handler (handle_one_request closes)
            keep = False
            self.refusals.refused("deadline", connection.peer, f"request not whole within {self.deadline:g} s")
        if keep:  # kept alive: back to the selector thread, with a new deadline for the next request
            connection.served += 1
            connection.deadline = time.monotonic() + self.deadline
            connection.need, connection.scanned = None, 0
            with self._lock:
                keep = not self._stopping
                if keep:
                    self._returned.append(connection)
        if keep:
            self._wake()
        else:
            self._close(connection)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.server_address}>"


def _accepts_gzip(header: str) -> bool:
    """`gzip` listed in Accept-Encoding and not refused with q=0."""
    for item in header.lower().split(","):
        name, _, params = item.strip().partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def send(request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes,
         compressible: bool = False, headers: Iterable[tuple[str, str]] = ()) -> None:
    """A complete response with Content-Type and Content-Length (and `headers`); a
    `compressible` body of some size is gzipped for a client that accepts it (a
    10,000-agent /metrics is ~8 MB)."""
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    for name, value in headers:
        request.send_header(name, value)
    if compressible:
        request.send_header("Vary", "Accept-Encoding")
        if len(body) >= GZIP_MIN and _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=5)
            request.send_header("Content-Encoding", "gzip")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    if request.command != "HEAD":  # HEAD: the GET's status and headers, no body (RFC 9110 9.3.2)
        request.wfile.write(body)


def send_json(request: BaseHTTPRequestHandler, status: int, document: Any) -> None:
    """A JSON response."""
    send(request, status, "application/json", json.dumps(document, indent=1).encode())
