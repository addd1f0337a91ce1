"""`replicante-poller gateway`: a verifying reverse proxy in front of any agent.

GETs of the agent API go to the upstream agent unchanged. A POST of an action (legacy
`/api/unstable/actions/schedule/*`, replisdk `/api/unstable/action`) goes only when its
signature verifies (Verifier);
every rejection is one generic 401, the reason logged and counted. The body is capped
before it is read. A retry of an action already forwarded gets the first answer again.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from ..agentapi import (
    ACTION,
    ACTION_INFO_PREFIX,
    ACTION_PREFIX,
    ACTIONS_FINISHED,
    ACTIONS_INDEX,
    ACTIONS_PREFIX,
    ACTIONS_QUEUE,
    AGENT_INFO,
    DATASTORE_INFO,
    NODE_INFO,
    SCHEDULE_PREFIX,
    SHARDS,
    SHARDS_INFO,
    STORE_INFO,
)
from ..config import PollSettings, TlsSettings
from ..errors import ConfigError, KeyFileError, PollerError, StoreError
from ..polling.discovery import Target
from ..polling.tls import TlsContexts
from ..polling.transport import AgentClient, Failure, Reply, Transport
from ..polling.poll import poll_target
from ..reasons import transient_status
from ..web.metrics import GatewayMetrics, new_registry, render
from ..web.server import DIGITS, CountingServer, send
from .gateway_config import GatewaySettings, load_gateway_config
from .replay import ReplayStore
from .verifier import Keyring, Rejection, Verdict, Verifier

log = logging.getLogger(__name__)
FORWARDED_HEADERS = ("content-type", "content-digest", "replicante-agent", "replicante-cluster", "replicante-node",
                     "signature-input", "signature")
SINGLE = FORWARDED_HEADERS  # headers that must not appear twice in a signed request
UPSTREAM_MAX_BODY = 4 * 1024 * 1024
UNAUTHORIZED = b'{"error":"unauthorized"}'
BAD_PATH = b'{"error":"the path must be printable ASCII"}'
METRICS_PATH = "/gateway/metrics"
READY_PATH = "/-/ready"
UNKNOWN_CLUSTER = "\x00unknown"  # no agent reports it: the identity poll stops at the cluster check
PRINTABLE_PATH = re.compile(r"/[\x21-\x7e]*")  # raw non-ASCII bytes or controls never reach the agent
AGENT_GETS = frozenset({  # the agent API's GETs, legacy then replisdk; nothing else is forwarded
    AGENT_INFO, DATASTORE_INFO, SHARDS, ACTIONS_INDEX, ACTIONS_PREFIX, ACTIONS_QUEUE, ACTIONS_FINISHED,
    NODE_INFO, STORE_INFO, SHARDS_INFO})
ACTION_ID_PATHS = (ACTION_INFO_PREFIX, ACTION_PREFIX)  # + an action id (legacy, replisdk)
ACTION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # ids are UUIDs: no dots, no percent-encoding


def configured_keyring(settings: GatewaySettings) -> Keyring:
    """The keyring of `keys` and `revoked`; a key file that cannot be used is a ConfigError
    naming the configuration file, `[gateway] keys` and the key file."""
    try:
        return Keyring.from_entries(settings.keys, settings.revoked)
    except KeyFileError as exc:
        raise ConfigError(settings.source, "gateway", "keys", str(exc)) from None


def agent_get(path: str) -> bool:
    """Whether `path` is exactly a GET of the agent API of either generation (no query)."""
    if path in AGENT_GETS:
        return True
    return any(path.startswith(prefix) and ACTION_ID.fullmatch(path[len(prefix):]) is not None
               for prefix in ACTION_ID_PATHS)


def _expects_continue(request: BaseHTTPRequestHandler) -> bool:
    """An HTTP/1.1 client waiting for `100 Continue` before it sends the body."""
    return request.request_version >= "HTTP/1.1" and request.headers.get("Expect", "").lower() == "100-continue"


def _has_body(request: BaseHTTPRequestHandler) -> bool:
    length = request.headers.get("Content-Length", "0").strip()
    return "Transfer-Encoding" in request.headers or length not in ("", "0")


class Gateway:
    """The running gateway: `start()`, `stop()`, `address`."""

    def __init__(self, settings: GatewaySettings, registry: Any = None):
        self.settings = settings
        self.registry = registry or new_registry()
        self.metrics = GatewayMetrics(self.registry)
        self._transport = Transport(TlsContexts())
        self._upstream = Target("upstream", settings.upstream, None,
                                PollSettings(interval=settings.timeout * 2, timeout=settings.timeout,
                                             max_body=UPSTREAM_MAX_BODY),
                                TlsSettings(ca_file=settings.upstream_ca_file, client_cert=settings.upstream_client_cert,
                                            client_key=settings.upstream_client_key))
        self._local = threading.local()
        self.verifier: Optional[Verifier] = None  # once the agent's identity is known
        self._keyring: Optional[Keyring] = None
        self._store: Optional[ReplayStore] = None
        self._waiting = f"waiting for the agent at {settings.upstream}: not asked yet"  # /-/ready while not ready
        self._answered = threading.Event()  # the identity is known: configured, or the upstream answered
        self._stopping = threading.Event()
        self._server: Optional[ThreadingHTTPServer] = None
        self._metrics_server: Optional[CountingServer] = None

    def start(self) -> None:
        """Load keys and the replay store, listen, and learn the agent's identity: from
        the configuration, else from the upstream, asked until it answers (actions are
        refused with 503 meanwhile, and `/-/ready` says what the gateway waits for).

        Raises KeyFileError/ConfigError (bad keys or files)."""
        settings = self.settings
        self._keyring = configured_keyring(settings)
        try:
            self._transport.contexts.get(self._upstream.tls)
        except ConfigError as exc:  # located in gateway.ini, where the upstream_* keys are
            key = None if exc.key is None else f"upstream_{exc.key}"
            raise ConfigError(settings.source, "gateway", key,
                              exc.message if key is not None else f"{exc.message} ({exc.source})") from None
        self._transport.start()
        try:
            self._store = ReplayStore(settings.replay_store)
        except StoreError as exc:
            raise ConfigError(settings.source, "gateway", "replay_store", str(exc)) from None
        self._start_metrics()
        self._server = _server(self, settings)
        threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True).start()
        if settings.cluster_id is not None and settings.node_id is not None:
            self._verify_for(settings.cluster_id, settings.node_id)  # nothing to learn from the upstream
            self._answered.set()
        else:
            self._ask_upstream()  # the identity, which actions wait for
        verifier = self.verifier
        identity = f" (cluster {verifier.cluster_id}, node {verifier.node_id})" if verifier is not None else ""
        log.info("gateway for %s%s with %d keys listening on %s:%d", settings.upstream, identity, len(self._keyring),
                 *self.address)
        if verifier is None:
            log.warning("%s; asking again every %gs (actions are refused with 503 until it answers)",
                        self._waiting, self._retry_seconds)
            threading.Thread(target=self._wait_for_upstream, name="gateway-upstream", daemon=True).start()

    def _verify_for(self, cluster_id: str, node_id: str) -> None:
        assert self._keyring is not None and self._store is not None
        settings = self.settings
        self.verifier = Verifier(self._keyring, cluster_id, node_id, self._store, agent_urls=settings.agent_urls,
                                 max_body=settings.max_body, claim_stale_after=2 * settings.timeout)

    @property
    def _retry_seconds(self) -> float:
        return max(1.0, min(self.settings.timeout, 5.0))

    def _wait_for_upstream(self) -> None:
        """Ask the upstream until it answers or the gateway stops (waits on the stop Event)."""
        while not self._stopping.wait(self._retry_seconds):
            try:
                if self._ask_upstream(retried=True):
                    return
            except Exception:  # the top of this thread's loop: log, count, keep asking
                log.exception("gateway: asking the upstream failed unexpectedly")
                self.metrics.request("error")

    def _ask_upstream(self, retried: bool = False) -> bool:
        """One poll of the upstream: True once it answered and the identity is known (the
        verifier built); else `_waiting` says why not."""
        upstream = dataclasses.replace(self._upstream, cluster_id=UNKNOWN_CLUSTER)
        result = poll_target(self._client(), upstream)
        if result.datastore is None:
            self._waiting = f"waiting for the agent at {self.settings.upstream}: {result.message}"
            return False
        if self.verifier is None:
            self._verify_for(result.datastore.cluster_id, result.datastore.node_id)
        self._answered.set()  # before the log line: whoever reads "ready" there finds /-/ready saying so
        if retried:
            log.info("the agent at %s answered (cluster %s, node %s): ready", self.settings.upstream,
                     result.datastore.cluster_id, result.datastore.node_id)
        return True

    def ready(self) -> tuple[bool, str]:
        """`/-/ready`: whether the agent's identity is known (configured, or the agent answered), in one line."""
        if self._answered.is_set() and self.verifier is not None:
            return True, (f"ready: forwarding to the agent at {self.settings.upstream} "
                          f"(cluster {self.verifier.cluster_id}, node {self.verifier.node_id})")
        return False, self._waiting

    def _start_metrics(self) -> None:
        """The metrics listener (`metrics_listen`), never the public one: rejection reasons
        and counts are for the operator, not for whoever reaches the gateway."""
        if self.settings.metrics_listen is None:
            log.info("gateway metrics are not served (set [gateway] metrics_listen to serve them)")
            return
        self._metrics_server = _metrics_server(self, self.settings.metrics_listen)
        threading.Thread(target=self._metrics_server.serve_forever, name="gateway-metrics", daemon=True).start()
        host, port = self._metrics_server.server_address[:2]
        log.info("gateway metrics on http://%s:%d%s", host, port, METRICS_PATH)

    def reload(self, path: str) -> None:
        """Re-read the configuration's keyring (`keys`, `revoked`); anything else needs a restart.

        A bad file keeps the running keyring and logs one error."""
        try:
            settings = load_gateway_config(path)
            keyring = configured_keyring(settings)
        except PollerError as exc:
            log.error("gateway reload failed, keeping the running keyring: %s", exc)
            return
        changed = dataclasses.replace(settings, keys=self.settings.keys, revoked=self.settings.revoked)
        if changed != self.settings:
            log.warning("gateway settings other than keys and revoked take effect at the next restart")
        self._keyring = keyring
        verifier = self.verifier
        if verifier is not None:
            verifier.keyring = keyring
        self.settings = dataclasses.replace(self.settings, keys=settings.keys, revoked=settings.revoked)
        log.info("gateway keyring reloaded: %d keys, %d revoked", len(keyring), len(keyring.revoked))

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        self._stopping.set()
        for server in (self._server, self._metrics_server):
            if server is not None:
                server.shutdown()
                server.server_close()
        self._transport.stop()

    def _client(self) -> AgentClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._transport.client()
        return client

    def forward(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[dict[str, str]] = None) -> Reply | Failure:
        """One request to the upstream agent on a fresh connection."""
        with self._client().connect(self._upstream) as conn:
            return conn.request(method, path, body, headers)

    # -- request handling (on the server's threads) ----------------------------

    def handle_ready(self, request: BaseHTTPRequestHandler) -> None:
        """`GET /-/ready` (both listeners): 200 once the agent answered, else 503; one line."""
        ok, line = self.ready()
        send(request, 200 if ok else 503, "text/plain; charset=utf-8", line.encode("utf-8", "replace") + b"\n")

    def handle_get(self, request: BaseHTTPRequestHandler) -> None:
        if request.path == READY_PATH and not _has_body(request):
            return self.handle_ready(request)
        if not PRINTABLE_PATH.fullmatch(request.path):
            return self._refuse(request, 400, BAD_PATH)
        if _has_body(request):  # never leave unread bytes to be parsed as the next request
            return self._refuse(request, 400, b'{"error":"a GET carries no body"}')
        if not agent_get(request.path):  # the agent API only: the agent never sees anything else
            self.metrics.request("refused")
            return send(request, 404, "application/json", b'{"error":"not an agent API path"}')
        reply = self.forward("GET", request.path)
        if isinstance(reply, Failure):
            return self._upstream_failed(request, reply.message)
        self.metrics.request("forwarded")
        send(request, reply.status, reply.content_type or "application/json", reply.body)

    def handle_metrics(self, request: BaseHTTPRequestHandler) -> None:
        """A GET on the metrics listener."""
        if request.path == READY_PATH and not _has_body(request):
            return self.handle_ready(request)
        if request.path != METRICS_PATH or _has_body(request):
            return self._refuse(request, 404, b'{"error":"not found"}')
        body, content_type = render(self.registry)
        send(request, 200, content_type, body)

    def handle_post(self, request: BaseHTTPRequestHandler) -> None:
        if not PRINTABLE_PATH.fullmatch(request.path):
            return self._refuse(request, 400, BAD_PATH)
        if not (request.path.startswith(SCHEDULE_PREFIX) or request.path == ACTION):
            return self._refuse(request, 405, b'{"error":"only signed action schedules are accepted"}')
        if self.verifier is None:  # whom actions are for is not known yet: a retry later may pass
            return self._not_ready(request)
        headers = self._signed_head(request)
        if isinstance(headers, Verdict):
            return self._reject_head(request, headers)
        if _expects_continue(request):  # only now that the head passed: 100 Continue invites the body
            request.send_response_only(100)
            request.end_headers()
        body = request.rfile.read(int(headers["content-length"]))
        verdict = self.verifier.verify("POST", request.path, headers, body)
        if not verdict.accepted:
            return self._reject(request, verdict)
        if verdict.duplicate:
            return self._answer_duplicate(request, verdict)
        self._forward_action(request, verdict, headers, body)

    def _signed_head(self, request: BaseHTTPRequestHandler) -> dict[str, str] | Verdict:
        """The headers of an action POST (lower-case names), or why it is refused before a
        byte of its body is read: size, repeated signed headers, no signature."""
        length = request.headers.get("Content-Length", "")
        if not DIGITS.fullmatch(length) or int(length) > self.settings.max_body or "Transfer-Encoding" in request.headers:
            return Verdict(False, Rejection.TOO_LARGE, f"Content-Length {length or 'missing'}")
        headers: dict[str, str] = {}
        for name in request.headers.keys():
            lower = name.lower()
            values = request.headers.get_all(name) or []
            if lower in SINGLE and (len(values) != 1 or lower in headers):
                return Verdict(False, Rejection.MALFORMED, f"{name} repeated")
            headers[lower] = ", ".join(values)
        if "signature-input" not in headers or "signature" not in headers:
            return Verdict(False, Rejection.MALFORMED, "Signature-Input or Signature missing")
        return headers

    def _reject_head(self, request: BaseHTTPRequestHandler, verdict: Verdict) -> None:
        """A POST refused on its head. A body too large, or not sent yet (the client waits for
        100 Continue), is never read: the connection closes; a small one already on its way
        is read and dropped, so that the answer is not lost to a reset."""
        if verdict.reason is Rejection.TOO_LARGE or _expects_continue(request):
            request.close_connection = True
        else:
            request.rfile.read(int(request.headers["Content-Length"]))
        self._reject(request, verdict)

    def _forward_action(self, request: BaseHTTPRequestHandler, verdict: Verdict, headers: dict[str, str],
                        body: bytes) -> None:
        """A verified action to the agent, its answer kept for retries while this request owns the claim."""
        assert self.verifier is not None and verdict.action_id is not None and verdict.claim is not None
        store, answered = self.verifier.store, False
        try:
            reply = self.forward("POST", request.path, body, {k: headers[k] for k in FORWARDED_HEADERS if k in headers})
            if isinstance(reply, Failure) or transient_status(reply.status):
                detail = reply.message if isinstance(reply, Failure) else f"HTTP {reply.status}"
                return self._upstream_failed(request, detail)  # not an answer to keep: a retry may go through
            answered = True
            if not store.record_outcome(verdict.action_id, reply.status, reply.content_type, reply.body, verdict.claim):
                log.warning("action %s: its claim went stale and was taken over; this answer is not kept",
                            verdict.action_id)
        finally:
            if not answered:  # only this request's own claim: never one that took a stale claim over
                store.release_action(verdict.action_id, verdict.claim)
        self.metrics.request("forwarded")
        log.info("action %s verified (key %s) and forwarded: HTTP %d", verdict.action_id, verdict.key_id, reply.status)
        send(request, reply.status, reply.content_type or "application/json", reply.body)

    def _answer_duplicate(self, request: BaseHTTPRequestHandler, verdict: Verdict) -> None:
        """A retry of an action already forwarded: the first answer, or 'try again' while in flight."""
        self.metrics.request("duplicate")
        previous = verdict.previous
        if previous is None:
            return send(request, 503, "application/json", b'{"error":"this action is being forwarded, retry"}',
                        headers=[("Retry-After", "1")])
        send(request, previous.status or 502, previous.content_type or "application/json", previous.body or b"")

    def _not_ready(self, request: BaseHTTPRequestHandler) -> None:
        """503 with Retry-After to an action POST before the agent's identity is known; its body is not read."""
        request.close_connection = True
        self.metrics.request("upstream_error")
        send(request, 503, "application/json", json.dumps({"error": self._waiting}).encode(),
             headers=[("Retry-After", str(int(self._retry_seconds)))])

    def _upstream_failed(self, request: BaseHTTPRequestHandler, detail: str) -> None:
        self.metrics.request("upstream_error")
        log.warning("upstream %s failed for %s %s: %s", self.settings.upstream, request.command, request.path, detail)
        send(request, 502, "application/json", b'{"error":"upstream unavailable"}')

    def _refuse(self, request: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        request.close_connection = True
        self.metrics.request("refused")
        send(request, status, "application/json", body)

    def _reject(self, request: BaseHTTPRequestHandler, verdict: Verdict) -> None:
        assert verdict.reason is not None
        self.metrics.rejected(verdict.reason.value)
        log.warning("refused %s %s from %s: %s (%s)", request.command, request.path, request.client_address[0],
                    verdict.reason.value, verdict.detail)
        send(request, 401, "application/json", UNAUTHORIZED)


def _metrics_server(gateway: Gateway, address: tuple[str, int]) -> CountingServer:
    """The plain HTTP listener of `/gateway/metrics` alone."""
    class MetricsHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "replicante-gateway"

        def do_GET(self) -> None:
            gateway.handle_metrics(self)

        def handle_expect_100(self) -> bool:
            return True  # nothing here takes a body: never invite one

        def _refuse(self) -> None:
            gateway._refuse(self, 405, b'{"error":"method not allowed"}')

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("gateway metrics: " + format, *args)

    class MetricsServer(CountingServer):
        on_error = staticmethod(lambda: gateway.metrics.request("error"))

    return MetricsServer(address, MetricsHandler)


def _server(gateway: Gateway, settings: GatewaySettings) -> CountingServer:
    """The gateway's listener: TLS handshake and whole request within its deadline, a fair
    share per peer address, refusals counted in replicante_gateway_listener_refusals_total
    (web.server.CountingServer, which also adds nosniff and CSP to every response)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "replicante-gateway"

        def do_GET(self) -> None:
            gateway.handle_get(self)

        def do_POST(self) -> None:
            gateway.handle_post(self)

        def handle_expect_100(self) -> bool:
            return True  # no 100 Continue yet: Gateway.handle_post sends it once the head passed its checks

        def _refuse(self) -> None:
            gateway._refuse(self, 405, b'{"error":"method not allowed"}')

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("gateway: " + format, *args)

    context: Optional[ssl.SSLContext] = None
    if settings.server_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(settings.server_cert, settings.server_key)
        except ssl.SSLError as exc:  # which files, and OpenSSL's reason without _ssl.c
            raise ConfigError(settings.source, "gateway", "server_key", f"{settings.server_key} cannot be used with "
                              f"server_cert {settings.server_cert}: {exc.reason or exc}") from None

    class Server(CountingServer):
        on_error = staticmethod(lambda: gateway.metrics.request("error"))

    return Server(settings.listen, Handler, name="gateway", ssl_context=context, max_body=settings.max_body,
                  on_refusal=gateway.metrics.listener.refused)
