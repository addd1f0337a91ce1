"""Real loopback servers for transport tests: TLS (or bare TCP) with a scripted HTTP/1.1 responder.

A `TlsServer` listens on 127.0.0.1, runs each accepted connection in its own thread and
answers every request with the handler registered for its path. A handler is given an
`Exchange` and may send arbitrary bytes: a proper response, headers one byte at a time, a
gzip bomb, nothing at all, or a reset. The server records what it saw, so tests can assert
on the wire: accepted TCP connections, completed handshakes, requests per connection, and
whether the client closed each connection (EOF).

Everything that waits does so on Events or on the socket, so a stopped server wakes every
thread at once; nothing here sleeps to order events.
"""
from __future__ import annotations

import dataclasses
import json
import socket
import ssl
import struct
import threading
import zlib
from typing import Any, Callable, Iterable, Mapping, Optional

STATUS_TEXT = {200: "OK", 302: "Found", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
MAX_HEADER_BYTES = 64 * 1024


@dataclasses.dataclass
class Request:
    """One request line and its headers, as the server read them."""

    method: str
    path: str
    version: str
    headers: dict[str, str]


class Connection:
    """What the server learnt about one accepted TCP connection."""

    def __init__(self, peer: tuple[str, int]):
        self.peer = peer
        self.requests: list[Request] = []
        self.handshake_done = threading.Event()
        self.handshake_error: Optional[BaseException] = None
        self.tls_version: Optional[str] = None
        self.client_cert: Optional[bytes] = None
        self.eof = threading.Event()  # the client closed (or reset) the connection
        self.reset_by_peer = False
        self.finished = threading.Event()  # the server thread of this connection ended


class Exchange:
    """One request being answered: the handler's view of the connection."""

    def __init__(self, server: "TlsServer", conn: Connection, sock: socket.socket, rfile: Any, request: Request):
        self.server, self.conn, self.sock, self.rfile, self.request = server, conn, sock, rfile, request
        self.aborted = False

    @property
    def stopping(self) -> threading.Event:
        return self.server.stopping

    def send(self, data: bytes) -> bool:
        """Send `data`; False when the client is gone."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def wait_for_client_close(self) -> None:
        """Block until the client closes the connection (or the server stops)."""
        try:
            while self.sock.recv(4096):
                pass
        except OSError:
            pass

    def abort(self) -> None:
        """Close with SO_LINGER 0: the client gets a TCP RST instead of a FIN."""
        self.aborted = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.rfile.close()
        self.sock.close()


# A handler answers one request; it returns True to keep the connection open for the next.
Handler = Callable[[Exchange], bool]


class TlsServer:
    """A threaded loopback server; `context=None` makes it accept TCP and never speak TLS."""

    def __init__(
        self,
        context: Optional[ssl.SSLContext],
        handlers: Optional[Mapping[str, Handler]] = None,
        default: Optional[Handler] = None,
    ):
        self.context = context
        self.handlers = dict(handlers or {})
        self.default = default or respond(404, b"")
        self.stopping = threading.Event()
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"tls-server-{self.port}", daemon=True)

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> "TlsServer":
        self._acceptor.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                # The plain socket's shutdown, also for an SSLSocket: its own would drop
                # the TLS object under the feet of the thread still using it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        for thread in threads:
            thread.join(5)

    # -- what was seen ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return len(self.connections)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return [r for c in self.connections for r in c.requests]

    def connection(self, index: int = 0) -> Connection:
        with self._lock:
            return self.connections[index]

    # -- serving ------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                raw, peer = self._listener.accept()
            except OSError:
                return
            conn = Connection(peer)
            thread = threading.Thread(target=self._serve, args=(raw, conn), daemon=True)
            with self._lock:
                self.connections.append(conn)
                self._sockets.append(raw)
                self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket, conn: Connection) -> None:
        try:
            if self.context is None:
                self._silent(raw, conn)
                return
            sock = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                self._sockets.append(sock)
            try:
                sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                conn.handshake_error = exc
                conn.handshake_done.set()
                # The TLS layer is dead but its alert is on the wire: read the raw socket
                # until the client closes, so that closing here never turns unread bytes
                # into a reset that the client could see before the alert.
                self._silent(socket.socket(fileno=sock.detach()), conn)
                return
            try:
                conn.tls_version = sock.version()
                conn.client_cert = sock.getpeercert(binary_form=True)
                conn.handshake_done.set()
                self._http(sock, conn)
            finally:
                sock.close()
        finally:
            conn.finished.set()

    def _silent(self, sock: socket.socket, conn: Connection) -> None:
        """Read whatever the client sends and never answer, until it goes away."""
        with self._lock:
            self._sockets.append(sock)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            conn.reset_by_peer = True
        finally:
            conn.eof.set()
            sock.close()

    def _http(self, sock: ssl.SSLSocket, conn: Connection) -> None:
        rfile = sock.makefile("rb")
        try:
            while True:
                try:
                    request = _read_request(rfile)
                except (ssl.SSLError, OSError):
                    conn.reset_by_peer = True
                    conn.eof.set()
                    return
                if request is None:
                    conn.eof.set()
                    return
                with self._lock:
                    conn.requests.append(request)
                exchange = Exchange(self, conn, sock, rfile, request)
                handler = self.handlers.get(request.path, self.default)
                keep_open = handler(exchange)
                if exchange.aborted:
                    return
                if not keep_open:
                    exchange.wait_for_client_close()
                    conn.eof.set()
                    return
        finally:
            if not rfile.closed:
                rfile.close()
            sock.close()


def _read_request(rfile: Any) -> Optional[Request]:
    """The next request head, or None at a clean EOF before any byte of it."""
    line = rfile.readline(MAX_HEADER_BYTES)
    if not line:
        return None
    method, path, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        line = rfile.readline(MAX_HEADER_BYTES)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return Request(method, path, version, headers)


# -- handlers ----------------------------------------------------------------------------


def head(status: int, headers: Iterable[tuple[str, str]], reason: Optional[str] = None) -> bytes:
    """A status line and header block."""
    lines = [f"HTTP/1.1 {status} {reason or STATUS_TEXT.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_bytes(status: int, body: bytes, content_type: Optional[str] = "application/json",
                   headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete response with a Content-Length."""
    fields = [("Content-Type", content_type)] if content_type else []
    fields += [("Content-Length", str(len(body)))]
    fields += list(headers)
    return head(status, fields) + body


def respond(status: int = 200, body: bytes = b"", content_type: Optional[str] = "application/json",
            headers: Iterable[tuple[str, str]] = ()) -> Handler:
    """A well-formed response, connection kept open."""
    data = response_bytes(status, body, content_type, tuple(headers))
    return lambda ex: ex.send(data)


def json_response(document: Any, status: int = 200, **kwargs: Any) -> Handler:
    return respond(status, json.dumps(document).encode(), **kwargs)


def drip(data: bytes, interval: float) -> Handler:
    """Send `data` one byte every `interval` seconds (Event-paced); stops when the client goes."""

    def handler(ex: Exchange) -> bool:
        for i in range(len(data)):
            if not ex.send(data[i:i + 1]) or ex.stopping.wait(interval):
                return False
        return True

    return handler


def then_drip(prefix: bytes, data: bytes, interval: float) -> Handler:
    """Send `prefix` at once, then drip `data`."""
    rest = drip(data, interval)
    return lambda ex: ex.send(prefix) and rest(ex)


def send_then_hang(data: bytes) -> Handler:
    """Send `data`, then say nothing more until the client closes."""

    def handler(ex: Exchange) -> bool:
        ex.send(data)
        ex.wait_for_client_close()
        return False

    return handler


def send_then_close(data: bytes) -> Handler:
    """Send `data`, then close the connection cleanly (FIN, not a reset)."""

    def handler(ex: Exchange) -> bool:
        ex.send(data)
        ex.aborted = True  # the serving loop closes the socket at once
        return False

    return handler


def send_then_reset(data: bytes) -> Handler:
    """Send `data`, then reset the connection (SO_LINGER 0)."""

    def handler(ex: Exchange) -> bool:
        ex.send(data)
        ex.abort()
        return False

    return handler


def chunked(chunk: bytes, count: int, content_type: str = "application/json") -> Handler:
    """A chunked body of `count` copies of `chunk`; stops early when the client goes."""

    def handler(ex: Exchange) -> bool:
        if not ex.send(head(200, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])):
            return False
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        for _ in range(count):
            if not ex.send(frame):
                return False
        return ex.send(b"0\r\n\r\n")

    return handler


def gzip_zeros(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about a thousand to one)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = []
    for _ in range(size // len(block)):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(bytes(size % len(block))))
    parts.append(compressor.flush())
    return b"".join(parts)


def closed_port() -> int:
    """A loopback port nobody listens on (bound, read, closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def server_context(cert: Any, maximum_version: Optional[ssl.TLSVersion] = None,
                   client_ca: Any = None) -> ssl.SSLContext:
    """A server SSLContext for a trustme leaf; `client_ca` makes client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    if maximum_version is not None:
        context.maximum_version = maximum_version
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(context)
    return context
