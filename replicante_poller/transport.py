"""HTTPS transport to agents: the only module that speaks `urllib3`.

Each poll opens ONE fresh TLS connection (shared SSLContext, no CA file re-read), carries
its GETs on it and closes it. One wall-clock deadline covers connect, handshake, headers
and bodies (enforced by the DeadlineReaper). Bodies are capped after decompression,
`Content-Type` must be JSON, redirects are never followed, the environment is ignored.
Every library exception is translated here into a `Failure`.

The connection is a urllib3 `HTTPSConnection` used directly: no requests Session,
adapter or connection pool is built per poll and nothing reads the environment (proxies,
`.netrc`, `REQUESTS_CA_BUNDLE`), which is most of what a poll cost beyond the TLS
handshake (benchmarks/README.md has the figures).
"""
from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import re
import functools
import socket
import ssl
import time
from typing import Any, Iterator, Mapping, Optional, Union
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.util.request import ACCEPT_ENCODING

from . import __version__
from .deadlines import DeadlineReaper, Watch
from .discovery import Target
from .reasons import Reason
from .tls import PeerCertificate, TlsContexts, peer_certificate, pin_matches

USER_AGENT = f"replicante-poller/{__version__}"
# What every request carries.
HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING, "Accept": "application/json",
           "Connection": "keep-alive"}
READ_CHUNK = 16 * 1024
_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes "²"


@dataclasses.dataclass(frozen=True)
class Failure:
    """A request that gave nothing usable, as a value: reason, message, HTTP status if any."""

    reason: Reason
    message: str
    status: Optional[int] = None
    retry_after: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, content type and the (capped, decompressed) body."""

    status: int
    status_text: str
    content_type: str
    body: bytes
    retry_after: Optional[float] = None


class _PollState:
    """What the connection learns during one poll: its watch, pins and peer certificate."""

    __slots__ = ("watch", "pins", "peer", "pin_failed")

    def __init__(self, watch: Watch, pins: frozenset[str]):
        self.watch, self.pins = watch, pins
        self.peer: Optional[PeerCertificate] = None
        self.pin_failed = False


class _WatchedConnection(HTTPSConnection):
    """An HTTPS connection whose socket the deadline reaper can cut, and that checks pins."""

    def __init__(self, *args: Any, poll: _PollState, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._poll = poll

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self._poll.watch.attach(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True)
        self._poll.peer = peer_certificate(der) if der else None
        if not pin_matches(self._poll.peer, self._poll.pins):
            self._poll.pin_failed = True
            self.close()
            raise urllib3.exceptions.SSLError("certificate matches no configured SPKI pin")


@functools.lru_cache(maxsize=65536)
def _endpoint(url: str) -> tuple[str, int, str]:
    """Host, port and path of an agent URL (parsed once per URL, not per poll)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443, parts.path


def _merge_headers(extra: Optional[Mapping[str, str]]) -> Mapping[str, str]:
    """The client's headers, overridden (case-insensitively) by a request's own."""
    if not extra:
        return HEADERS
    overridden = {name.lower() for name in extra}
    merged = {name: value for name, value in HEADERS.items() if name.lower() not in overridden}
    merged.update(extra)
    return merged


class AgentClient:
    """Polls agents from one worker thread (its connections are not shared by threads).

    A poll is one urllib3 connection used directly: no pool, no requests Session, no
    adapter, so nothing per request reads the environment, merges settings, or builds a
    pool, and verification stays entirely in the shared SSLContext (no CA file is read).
    """

    def __init__(self, contexts: TlsContexts, reaper: DeadlineReaper):
        self._contexts, self._reaper = contexts, reaper

    @contextlib.contextmanager
    def connect(self, target: Target) -> Iterator["AgentConnection"]:
        """A fresh connection to `target` for one poll, closed when the block ends."""
        watch = self._reaper.watch(target.poll.timeout)
        state = _PollState(watch, target.tls.pins)
        host, port, prefix = _endpoint(target.url)
        conn = _WatchedConnection(host, port, timeout=target.poll.timeout, ssl_context=self._contexts.get(target.tls),
                                  poll=state)
        try:
            yield AgentConnection(conn, prefix, target, state)
        finally:
            conn.close()
            watch.close()

    def close(self) -> None:
        """Nothing is kept between polls; here for symmetry with `connect`."""


class AgentConnection:
    """The requests of one poll, on one connection."""

    def __init__(self, conn: HTTPSConnection, prefix: str, target: Target, state: _PollState):
        self._conn, self._prefix, self._target, self._state = conn, prefix, target, state
        self._used = False

    @property
    def peer(self) -> Optional[PeerCertificate]:
        """The agent's certificate, once the handshake happened."""
        return self._state.peer

    def get(self, path: str) -> Union[bytes, Failure]:
        """The JSON body of a 200 answer at `path`, or the Failure that prevented it."""
        reply = self.request("GET", path)
        if isinstance(reply, Failure):
            return reply
        if reply.status != 200:
            return Failure(Reason.HTTP_STATUS, f"GET {path} answered HTTP {reply.status} {reply.status_text}".rstrip(),
                           status=reply.status, retry_after=reply.retry_after)
        media = reply.content_type.split(";", 1)[0].strip().lower()
        if media != "application/json":
            return Failure(Reason.CONTENT_TYPE,
                           f"GET {path} answered Content-Type {reply.content_type or 'none'!r}, not application/json")
        return reply.body

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[dict[str, str]] = None) -> Union["Reply", Failure]:
        """Any answer at all (whatever its status) with its capped body, or a Failure."""
        remaining = self._state.watch.deadline - time.monotonic()
        if remaining <= 0:
            return self._deadline_failure()
        cap = self._target.poll.max_body
        conn = self._conn
        try:
            if self._used and conn.sock is not None and not conn.is_connected:
                conn.close()  # the agent closed it between requests: reconnect, as a pool would
            self._used = True
            conn.timeout = remaining
            if conn.sock is None:
                conn.connect()
            conn.request(method, self._prefix + path, body=body, headers=_merge_headers(headers),
                         preload_content=False, decode_content=True)
            response = conn.getresponse()
        except Exception as exc:  # translated here: the library boundary
            return self._classify(exc)
        try:
            length = response.headers.get("Content-Length", "")
            if _LENGTH.fullmatch(length) and int(length) > cap:
                return Failure(Reason.TOO_LARGE, f"{method} {path} body of {length} bytes is over the {cap} byte cap")
            content = _read_body(response, cap)
        except Exception as exc:
            return self._classify(exc)
        finally:
            response.close()
        if self._state.watch.expired:  # a close-delimited body cut by the reaper looks complete
            return self._deadline_failure()
        if isinstance(content, Failure):
            return content
        status = response.status
        retry_after = _retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        return Reply(status, response.reason or "", response.headers.get("Content-Type", ""), content, retry_after)

    def _deadline_failure(self) -> Failure:
        timeout = self._target.poll.timeout
        if self._state.watch.connected:
            return Failure(Reason.TIMEOUT, f"poll deadline of {timeout:g}s passed")
        return Failure(Reason.CONNECT_TIMEOUT, f"TCP connect did not complete within {timeout:g}s")

    def _classify(self, exc: BaseException) -> Failure:
        if self._state.pin_failed:
            pin = self._state.peer.spki_pin if self._state.peer else "unknown"
            return Failure(Reason.TLS_PIN, f"certificate key {pin} matches no configured pin")
        if self._state.watch.expired:
            return self._deadline_failure()
        failure = classify(exc)
        if failure.reason in (Reason.TIMEOUT, Reason.CONNECT_TIMEOUT) and time.monotonic() >= self._state.watch.deadline:
            return self._deadline_failure()  # the socket's own timeout fired just before the reaper
        return failure


def classify(exc: BaseException) -> Failure:
    """Translate a urllib3/socket/ssl exception into a Failure."""
    chain = list(_chain(exc))

    def find(*types: type) -> Optional[BaseException]:
        return next((e for e in chain if isinstance(e, types)), None)

    if (e := find(socket.gaierror, urllib3.exceptions.NameResolutionError)) is not None:
        return Failure(Reason.DNS, f"name resolution failed: {_short(e)}")
    if (e := find(ssl.SSLCertVerificationError)) is not None:
        return Failure(Reason.TLS_VERIFY, f"certificate verification failed: {getattr(e, 'verify_message', None) or _short(e)}")
    if (e := find(urllib3.exceptions.NewConnectionError, ConnectionRefusedError)) is not None:
        return Failure(Reason.CONNECT, f"connection failed: {_short(e)}")  # before: it subclasses ConnectTimeoutError
    if (e := find(urllib3.exceptions.ConnectTimeoutError)) is not None:
        return Failure(Reason.CONNECT_TIMEOUT, "TCP connect timed out")
    if (e := find(TimeoutError, socket.timeout, urllib3.exceptions.ReadTimeoutError)) is not None:
        return Failure(Reason.TIMEOUT, "read timed out")
    if (e := find(ssl.SSLError)) is not None:
        return Failure(Reason.TLS_HANDSHAKE, f"TLS failed: {_short(e)}")
    if (e := find(urllib3.exceptions.DecodeError)) is not None:
        return Failure(Reason.INVALID_JSON, f"body could not be decoded: {_short(e)}")
    if (e := find(OSError, urllib3.exceptions.HTTPError)) is not None:
        return Failure(Reason.CONNECT, f"connection broken: {_short(e)}")
    return Failure(Reason.INTERNAL, f"unexpected {type(exc).__name__}: {exc}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: causes, contexts, urllib3 reasons, args."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(a for a in current.args if isinstance(a, BaseException))
        todo.extend(e for e in linked if isinstance(e, BaseException))


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _read_body(response: urllib3.BaseHTTPResponse, cap: int) -> Union[bytes, Failure]:
    """Read the (decompressed) body, giving up as soon as it passes `cap` bytes."""
    raw = response
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = raw.read(READ_CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            return Failure(Reason.TOO_LARGE, f"body passed the {cap} byte cap (after decompression)")
        chunks.append(chunk)


def _retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when unusable."""
    if not value:
        return None
    value = value.strip()
    if _LENGTH.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
