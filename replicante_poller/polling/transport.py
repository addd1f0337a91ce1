"""HTTPS transport to agents on `requests`: the only module that speaks requests and urllib3.

Each worker thread owns one `requests.Session` (sessions are not shared between threads)
with `PollAdapter`, the project's `HTTPAdapter` subclass, mounted for `https://`. A poll
binds ONE fresh urllib3 connection to the adapter, sends its requests on it through
`Session.send` and closes it: the adapter never pools, never opens a second connection
(an agent that closes between requests fails the poll), never follows redirects, and
verifies with the shared SSLContext only (requests' per-request CA bundle handling,
certifi and the environment are bypassed: `cert_verify` is a no-op by design and
`trust_env` is off). One wall-clock deadline covers resolution and every address
(`Dialer`), then handshake, headers and bodies (the DeadlineReaper). Bodies are capped
after decompression and `Content-Type` must be JSON. Every library exception is
translated here into a `Failure`; an exception this module does not know is a bug and
is raised to the caller's loop, which logs and counts it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import http.client
import http.cookiejar
import json
import re
import socket
import ssl
import time
from typing import Any, Iterator, Mapping, Optional, Union
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPSConnection
from urllib3.util.request import ACCEPT_ENCODING

from .. import __version__
from ..reasons import LOCAL_ERRNOS, Reason
from .deadlines import DeadlineReaper, Watch
from .dialer import Dialer, DialFailure
from .discovery import Target
from .tls import PeerCertificate, TlsContexts, peer_certificate, pin_matches

USER_AGENT = f"replicante-poller/{__version__}"
# What every request carries.
HEADERS = CaseInsensitiveDict({"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING,
                               "Accept": "application/json", "Connection": "keep-alive"})
READ_CHUNK = 16 * 1024
NO_PROXIES: dict[str, str] = {}
_LENGTH = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() also takes "²"


@dataclasses.dataclass(frozen=True)
class Failure:
    """A request that gave nothing usable, as a value: reason, message, HTTP status if any."""

    reason: Reason
    message: str
    status: Optional[int] = None
    retry_after: Optional[float] = None
    agent_error: Optional[str] = None  # the agent's own error message, from an error answer's JSON body


@dataclasses.dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, content type and the (capped, decompressed) body."""

    status: int
    status_text: str
    content_type: str
    body: bytes
    retry_after: Optional[float] = None


class _PollState:
    """What the connection learns during one poll: its watch, pins, peer certificate."""

    __slots__ = ("watch", "timeout", "pins", "dialer", "peer", "pin_failed", "dialed")

    def __init__(self, watch: Watch, timeout: float, pins: frozenset[str], dialer: Dialer):
        self.watch, self.timeout, self.pins, self.dialer = watch, timeout, pins, dialer
        self.peer: Optional[PeerCertificate] = None
        self.pin_failed = False
        self.dialed = False


class _PollConnection(HTTPSConnection):
    """The one connection of a poll: dialed within the deadline, watched by the reaper,
    pins checked, and never dialed twice."""

    def __init__(self, *args: Any, poll: _PollState, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._poll = poll

    def _new_conn(self) -> socket.socket:
        poll = self._poll
        if poll.dialed:
            raise DialFailure(Reason.CONNECT, "the agent closed the connection before this request "
                                              "(one connection per poll: not reopened)")
        poll.dialed = True
        sock = poll.dialer.connect(self._dns_host, self.port, poll.watch.deadline, poll.timeout)
        poll.watch.attach(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True)
        self._poll.peer = peer_certificate(der) if der else None
        if not pin_matches(self._poll.peer, self._poll.pins):
            self._poll.pin_failed = True
            self.close()
            raise urllib3.exceptions.SSLError("certificate matches no configured SPKI pin")


class PollAdapter(requests.adapters.HTTPAdapter):
    """requests' transport adapter for polls: each request goes on the connection bound
    for the current poll (`bind`), never on a pooled or a new one.

    Trust lives in the connection's SSLContext; `verify=False`, a client certificate path
    or a proxy given per request are refused rather than ignored (fail closed).
    """

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self._conn: Optional[_PollConnection] = None

    @contextlib.contextmanager
    def bind(self, conn: _PollConnection) -> Iterator[None]:
        """Route this adapter's requests to `conn` for the length of the block."""
        self._conn = conn
        try:
            yield
        finally:
            self._conn = None

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing per request: verification is the shared SSLContext's (no CA file is read)."""

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """requests' Response around urllib3's, without filling a cookie jar (agents' cookies
        are never kept) or guessing a charset (bodies are read as JSON bytes)."""
        response = requests.Response()
        response.status_code = resp.status
        response.headers = CaseInsensitiveDict(resp.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url or ""
        response.request = req
        response.connection = self
        return response

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Optional[Mapping[str, str]] = None) -> requests.Response:
        conn = self._conn
        if conn is None:
            raise RuntimeError("PollAdapter.send outside of a poll: use AgentClient.connect")
        if verify is not True or cert is not None or proxies:
            raise ValueError("agent requests verify with the configured SSLContext, without proxy")
        conn.timeout = timeout
        if not conn.is_connected:
            conn.connect()  # the poll's first request; once the agent closed it, _new_conn refuses a redial
        conn.request(request.method or "GET", request.path_url, body=request.body, headers=request.headers,
                     preload_content=False, decode_content=False)
        return self.build_response(request, conn.getresponse())


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    """Agents' cookies are neither kept nor sent."""

    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class PollSession(requests.Session):
    """A Session that never sees a redirect: a 3xx is an answer like any other (and its
    body is never read by requests' redirect machinery, which would read it uncapped)."""

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


def new_session() -> PollSession:
    """A Session for one thread: PollAdapter for https://, nothing from the environment."""
    session = PollSession()
    session.trust_env = False
    session.max_redirects = 0
    session.cookies.set_policy(_NoCookies())
    session.adapters.clear()
    session.mount("https://", PollAdapter())
    return session


class AgentRequest(requests.PreparedRequest):
    """A PreparedRequest to an agent, made from a checked agent URL and a path: its path is
    kept as given (an attribute here, not re-parsed from the URL on every send)."""

    path_url = ""  # shadows PreparedRequest.path_url, a property that parses the URL each time


@functools.lru_cache(maxsize=65536)
def _endpoint(url: str) -> tuple[str, int, str]:
    """Host, port and path prefix of an agent URL (parsed once per URL, not per poll)."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 443, parts.path


class Transport:
    """What the AgentClients of a process share: TLS contexts, the deadline reaper (started
    and stopped here) and the dialer. `client()` makes the client of one thread."""

    def __init__(self, contexts: TlsContexts, dialer_threads: int = 8, reaper: Optional[DeadlineReaper] = None,
                 dialer: Optional[Dialer] = None):
        self.contexts = contexts
        self.reaper = reaper or DeadlineReaper()
        self.dialer = dialer or Dialer(dialer_threads)

    def start(self) -> "Transport":
        self.reaper.start()
        return self

    def stop(self) -> None:
        self.reaper.stop()

    def client(self) -> "AgentClient":
        return AgentClient(self)


class AgentClient:
    """Polls agents from one thread: its Session and adapter are not shared by threads."""

    def __init__(self, transport: Transport):
        self._contexts, self._reaper, self._dialer = transport.contexts, transport.reaper, transport.dialer
        self._session = new_session()
        self._adapter: PollAdapter = self._session.get_adapter("https://")  # type: ignore[assignment]

    @contextlib.contextmanager
    def connect(self, target: Target) -> Iterator["AgentConnection"]:
        """A fresh connection to `target` for one poll, closed when the block ends."""
        timeout = target.poll.timeout
        watch = self._reaper.watch(timeout)
        state = _PollState(watch, timeout, target.tls.pins, self._dialer)
        host, port, _ = _endpoint(target.url)
        conn = _PollConnection(host, port, timeout=timeout, ssl_context=self._contexts.get(target.tls), poll=state)
        try:
            with self._adapter.bind(conn):
                yield AgentConnection(self, target, state)
        finally:
            conn.close()
            watch.close()

    @staticmethod
    def prepare(method: str, base: str, path: str, body: Optional[bytes],
                headers: Optional[Mapping[str, str]]) -> AgentRequest:
        """A request sending exactly `path` (after the agent URL `base`, already checked by
        the configuration), `body`, and the client's headers overridden by `headers`."""
        request = AgentRequest()
        request.method, request.url, request.path_url = method, base + path, _endpoint(base)[2] + path
        request.headers = HEADERS.copy()
        if headers:
            request.headers.update(headers)
        if body is not None:
            request.body = body
            request.headers["Content-Length"] = str(len(body))
        return request

    def send(self, request: requests.PreparedRequest, timeout: float) -> requests.Response:
        """`Session.send` on the bound connection: streamed, no redirects, no proxies."""
        return self._session.send(request, stream=True, timeout=timeout, allow_redirects=False,
                                  verify=True, cert=None, proxies=NO_PROXIES)

    def close(self) -> None:
        self._session.close()


class AgentConnection:
    """The requests of one poll, on one connection."""

    def __init__(self, client: AgentClient, target: Target, state: _PollState):
        self._client, self._target, self._state = client, target, state

    @property
    def peer(self) -> Optional[PeerCertificate]:
        """The agent's certificate, once the handshake happened."""
        return self._state.peer

    def get(self, path: str, max_body: Optional[int] = None) -> Union[bytes, Failure]:
        """The JSON body of a 200 answer at `path`, or the Failure that prevented it.

        `max_body` caps this answer (default: the target's `max_body`)."""
        reply = self.request("GET", path, max_body=max_body)
        if isinstance(reply, Failure):
            return reply
        if reply.status != 200:
            said = agent_error(reply.body)
            message = f"GET {path} answered HTTP {reply.status} {reply.status_text}".rstrip()
            return Failure(Reason.HTTP_STATUS, f"{message}: {said}" if said else message,
                           status=reply.status, retry_after=reply.retry_after, agent_error=said)
        media = reply.content_type.split(";", 1)[0].strip().lower()
        if media != "application/json":
            return Failure(Reason.CONTENT_TYPE,
                           f"GET {path} answered Content-Type {reply.content_type or 'none'!r}, not application/json")
        return reply.body

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Mapping[str, str]] = None, max_body: Optional[int] = None) -> Union[Reply, Failure]:
        """Any answer at all (whatever its status) with its capped body, or a Failure."""
        remaining = self._state.watch.deadline - time.monotonic()
        if remaining <= 0:
            return self._deadline_failure()
        client = self._client
        try:
            response = client.send(client.prepare(method, self._target.url, path, body, headers), remaining)
        except Exception as exc:  # translated here: the library boundary
            return self._classify(exc)
        cap = max_body or self._target.poll.max_body
        try:
            length = response.headers.get("Content-Length", "")
            if _LENGTH.fullmatch(length) and int(length) > cap:
                return Failure(Reason.TOO_LARGE, f"{method} {path} body of {length} bytes is over the {cap} byte cap")
            content = _read_body(response.raw, cap)
        except Exception as exc:
            return self._classify(exc)
        finally:
            response.close()
        if self._state.watch.expired:  # a close-delimited body cut by the reaper looks complete
            return self._deadline_failure()
        if isinstance(content, Failure):
            return content
        status = response.status_code
        retry_after = _retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        return Reply(status, response.reason or "", response.headers.get("Content-Type", ""), content, retry_after)

    def _deadline_failure(self) -> Failure:
        timeout = self._target.poll.timeout
        if self._state.watch.connected:
            return Failure(Reason.TIMEOUT, f"poll deadline of {timeout:g}s passed")
        return Failure(Reason.CONNECT_TIMEOUT, f"TCP connect did not complete within {timeout:g}s")

    def _classify(self, exc: Exception) -> Failure:
        if isinstance(exc, DialFailure):  # resolution and connect keep their own deadline
            return Failure(exc.reason, exc.message)
        if self._state.pin_failed:
            pin = self._state.peer.spki_pin if self._state.peer else "unknown"
            return Failure(Reason.TLS_PIN, f"certificate key {pin} matches no configured pin")
        if self._state.watch.expired:
            return self._deadline_failure()
        failure = classify(exc)
        if failure is None:
            raise exc  # not the agent's doing: a bug of ours, for the caller's loop to log and count
        if failure.reason is Reason.TIMEOUT and time.monotonic() >= self._state.watch.deadline:
            return self._deadline_failure()  # the socket's own timeout fired just before the reaper
        return failure


AGENT_ERROR_CHARS = 200  # of an agent's error message, in poll messages


def agent_error(body: bytes) -> Optional[str]:
    """The message of an agent's JSON error answer, printable and short; None for anything
    else. Legacy agents send `{"error": TEXT, ...}`, replisdk agents
    `{"error": true, "error_msg": TEXT, "error_cause": TEXT?}`."""
    if not body.startswith(b"{") or len(body) > 16 * AGENT_ERROR_CHARS:
        return None
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    text = document.get("error_msg") if document.get("error") is True else document.get("error")
    if not isinstance(text, str):
        return None
    cause = document.get("error_cause") if document.get("error") is True else None
    if isinstance(cause, str) and cause and cause != text:
        text = f"{text} ({cause})"
    printable = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return (printable[:AGENT_ERROR_CHARS - 3] + "...") if len(printable) > AGENT_ERROR_CHARS else printable or None


def post_json(url: str, document: Mapping[str, Any], timeout: float, max_body: int,
              ca_file: Optional[str] = None, token: Optional[bytes] = None) -> Union[Any, Failure]:
    """One JSON POST outside the poll path (Core's HTTP discovery): the decoded JSON answer
    of a 200, or the Failure. Verified with `ca_file` or the system's trust; nothing from
    the environment, no redirects, the body capped like an agent's."""
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token.decode("utf-8", "replace")
    with requests.Session() as session:
        session.trust_env = False
        try:
            response = session.post(url, json=dict(document), headers=headers, timeout=timeout,
                                    verify=ca_file or True, allow_redirects=False, stream=True)
            try:
                body = _read_body(response.raw, max_body)
            finally:
                response.close()
        except Exception as exc:  # translated here: the library boundary
            failure = classify(exc)
            if failure is None:
                raise
            return failure
    if isinstance(body, Failure):
        return body
    if response.status_code != 200:
        return Failure(Reason.HTTP_STATUS, f"POST {url} answered HTTP {response.status_code} {response.reason}".rstrip(),
                       status=response.status_code)
    try:
        return json.loads(body)
    except ValueError as exc:
        return Failure(Reason.INVALID_JSON, f"POST {url} answered invalid JSON: {exc}")


def classify(exc: BaseException) -> Optional[Failure]:
    """Translate a dialer/urllib3/http.client/socket/ssl exception into a Failure
    (None: not a network or agent failure)."""
    chain = list(_chain(exc))

    def find(*types: type) -> Optional[BaseException]:
        return next((e for e in chain if isinstance(e, types)), None)

    if (e := find(DialFailure)) is not None:
        return Failure(e.reason, e.message)  # type: ignore[attr-defined]
    if (e := next((x for x in chain if isinstance(x, OSError) and x.errno in LOCAL_ERRNOS), None)) is not None:
        return Failure(Reason.LOCAL, f"the poller ran short: {_short(e)} (not the agent's fault)")
    if (e := find(socket.gaierror, urllib3.exceptions.NameResolutionError)) is not None:
        host = getattr(find(urllib3.exceptions.NameResolutionError), "conn", None)
        name = f" of {host.host}" if host is not None else ""
        return Failure(Reason.DNS, f"name resolution{name} failed: {_os_text(find(socket.gaierror) or e)}")
    if (e := find(ssl.SSLCertVerificationError)) is not None:
        return Failure(Reason.TLS_VERIFY, f"certificate verification failed: {getattr(e, 'verify_message', None) or _short(e)}")
    if find(http.client.RemoteDisconnected) is not None:
        return Failure(Reason.CONNECT, "the agent closed the connection without answering")
    if (e := find(urllib3.exceptions.InvalidChunkLength, urllib3.exceptions.ResponseNotChunked)) is not None:
        return Failure(Reason.PROTOCOL, f"broken chunked encoding: {_short(e)}")
    if find(http.client.IncompleteRead) is not None and (e := find(ValueError)) is not None:
        return Failure(Reason.PROTOCOL, f"broken chunked encoding: {_short(e)}")  # http.client: bad chunk size
    if (e := find(http.client.LineTooLong)) is not None:
        return Failure(Reason.PROTOCOL, f"{_short(e)} (an answer line over 64 KiB)")
    if (e := find(http.client.BadStatusLine)) is not None:
        return Failure(Reason.PROTOCOL, f"not an HTTP/1.x answer (HTTP/0.9 or garbage): status line {_short(e)}")
    if (e := find(http.client.HTTPException)) is not None and find(http.client.IncompleteRead) is None:
        return Failure(Reason.PROTOCOL, f"broken HTTP answer: {_short(e)}")
    if (e := find(urllib3.exceptions.NewConnectionError, ConnectionRefusedError)) is not None:
        conn = getattr(e, "conn", None)  # before: it subclasses ConnectTimeoutError
        where = f" ({f'[{conn.host}]' if ':' in conn.host else conn.host}:{conn.port})" if conn is not None else ""
        cause = next((x for x in chain if isinstance(x, OSError) and x.strerror), e)
        return Failure(Reason.CONNECT, f"connection failed: {_os_text(cause)}{where}")
    if find(urllib3.exceptions.ConnectTimeoutError) is not None:
        return Failure(Reason.CONNECT_TIMEOUT, "TCP connect timed out")
    if find(TimeoutError, socket.timeout, urllib3.exceptions.ReadTimeoutError) is not None:
        return Failure(Reason.TIMEOUT, "read timed out")
    if (e := find(ssl.SSLError)) is not None:
        return Failure(Reason.TLS_HANDSHAKE, f"TLS failed: {_short(e)}")
    if (e := find(urllib3.exceptions.DecodeError)) is not None:
        return Failure(Reason.INVALID_JSON, f"body could not be decoded: {_short(e)}")
    if (e := find(OSError, urllib3.exceptions.HTTPError, http.client.IncompleteRead)) is not None:
        return Failure(Reason.CONNECT, f"connection broken: {_short(e)}")
    return None


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


# What urllib3 and requests put in front of their messages: a connection's or pool's repr;
# and what the ssl module puts after OpenSSL's text: CPython's source line, `(_ssl.c:2427)`.
_REPRS = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*|\b\w*(?:Connection|Pool)\w*\([^()]*\):?\s*"
                    r"|\s*\(_ssl\.c:\d+\)")


def _os_text(exc: BaseException) -> str:
    """An OS error as its words (`Connection refused`), without errno; others as `_short`."""
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else _short(exc)


def _short(exc: BaseException) -> str:
    """The text of an exception for a message: no object or connection reprs, at most 200 characters."""
    text = _REPRS.sub("", str(getattr(exc, "reason", None) or exc)).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_body(raw: urllib3.BaseHTTPResponse, cap: int) -> Union[bytes, Failure]:
    """Read the (decompressed) body, giving up as soon as it passes `cap` bytes."""
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
