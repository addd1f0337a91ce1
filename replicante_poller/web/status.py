"""The status listener: `/metrics`, `/api/v1/targets`, the status pages (`web.page`: `/`,
`/agent` and their script), and the actions API (`/api/v1/actions`, handed to `ActionsApi`).

Metrics, targets and the page are read-only views over state snapshots; the only writes
are action submissions and cancellations, which go to the journal through `ActionsApi`.
"""
from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterable, Optional, Protocol

from ..durations import rfc3339
from ..limits import MAX_BODY
from ..polling.state import Reported, TargetView
from .metrics import PREFIX, ListenerMetrics, new_registry, render
from .page import PATHS as PAGE_PATHS
from .page import serve as serve_page
from .server import DIGITS, CountingServer, send, send_json

log = logging.getLogger(__name__)
CANCEL_PATH = re.compile(r"/api/v1/actions/([^/]+)/cancel")


def target_json(view: TargetView) -> dict[str, Any]:
    """One target as the status API shows it."""
    result = view.result
    return {
        "cluster": view.target.cluster_id,
        "display_name": view.target.display_name,
        "url": view.target.url,
        "api": view.api,
        "status": result.status.value if result else None,
        "reason": result.reason.value if result and result.reason else None,
        "message": result.message if result else "not polled yet",
        "health": view.health.state.value,
        "flapping": view.flapping,
        "deferred_until": rfc3339(view.deferred_until),
        "last_poll": rfc3339(result.started) if result else None,
        "last_success": rfc3339(view.last_success),
        "duration_seconds": round(result.duration, 6) if result else None,
        "agent": result.agent.to_json() if result and result.agent else None,
        "datastore": result.datastore.to_json() if result and result.datastore else None,
        "node_status": result.node_status.to_json() if result and result.node_status else None,
        "shards": [s.to_json() for s in result.shards] if result and result.shards is not None else None,
        "tls_cert_expiry": rfc3339(result.cert_not_after) if result else None,
    }


def targets_document(views: Iterable[TargetView], owner: Callable[[str], Optional[str]] = lambda cluster: None,
                     reported: Iterable[Reported] = (), me: Optional[str] = None) -> dict[str, Any]:
    """The `/api/v1/targets` document, sorted by cluster then URL: the agents this instance
    (`me`) polls, then with [coordination] those of the other instances as `reported`.
    `owner` names the instance polling a cluster (the lock's holder, None if nobody holds
    it); `reported_by` who the health shown comes from, `published_at` when it published it
    (None for agents polled here, which win over a report of the same agent)."""
    rows = [(v, dict(target_json(v), owner=owner(v.target.cluster_id), reported_by=me, published_at=None))
            for v in views]
    here = {v.target.key for v, _ in rows}
    rows += [(r.view, dict(target_json(r.view), owner=owner(r.view.target.cluster_id), reported_by=r.by,
                           published_at=rfc3339(r.published_at)))
             for r in reported if r.view.target.key not in here]
    return {"targets": [row for _, row in sorted(rows, key=lambda pair: pair[0].target.key)]}


class ActionRoutes(Protocol):
    """The actions API behind `/api/v1/actions` (`actions.api.ActionsApi`): status and document."""

    def get(self, path: str, authorization: Optional[str] = None) -> tuple[int, dict[str, Any]]: ...

    def post(self, authorization: Optional[str], body: bytes) -> tuple[int, dict[str, Any]]: ...

    def cancel(self, action_id: str, authorization: Optional[str]) -> tuple[int, dict[str, Any]]: ...

    def agent_actions(self, agent: str, limit: int = 20) -> list[dict[str, Any]]:
        """An agent's recent actions for its status page, without args (StoreError: unreadable)."""


class Lifecycle(Protocol):
    """What `/-/ready` and `POST /-/reload` ask of the service."""

    def ready(self) -> tuple[bool, str]: ...

    def reload(self) -> tuple[bool, str]: ...


class StatusServer:
    """The HTTP listener of the service, on its own threads (web.server.CountingServer).

    Its refusals are counted in `replicante_poller_listener_refusals_total{reason}`, in
    `registry` (the service's) or else in one of its own, served at the end of /metrics.
    `ssl_context` serves it over HTTPS (`[http] tls_*`)."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], list[TargetView]],
                 metrics: Callable[[], tuple[bytes, str]], on_error: Callable[[str], None] = lambda name: None,
                 actions: Optional[ActionRoutes] = None, lifecycle: Optional[Lifecycle] = None,
                 registry: Optional[Any] = None, ssl_context: Optional[ssl.SSLContext] = None):
        self._snapshot, self._metrics, self._actions, self._lifecycle = snapshot, metrics, actions, lifecycle
        self._listener_registry = new_registry() if registry is None else None
        listener = ListenerMetrics(registry if registry is not None else self._listener_registry, PREFIX)
        outer = self

        class Server(CountingServer):
            pass

        Server.on_error = staticmethod(lambda: on_error("status_api"))

        class Handler(BaseHTTPRequestHandler):
            server_version = "replicante-poller"

            def do_GET(self) -> None:
                outer._get(self)

            def do_HEAD(self) -> None:  # answered as GET; send() leaves the body out
                outer._get(self)

            def do_POST(self) -> None:
                outer._post(self)

            def do_other(self) -> None:
                outer._not_allowed(self)

            do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_other

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("status api: " + format, *args)

        self._server = Server((host, port), Handler, name="status api", on_refusal=listener.refused, max_body=MAX_BODY,
                              ssl_context=ssl_context)
        self._thread = threading.Thread(target=self._server.serve_forever, name="status-api", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever: only when it runs
            self._server.shutdown()
        self._server.server_close()

    def _get(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        headers: tuple[tuple[str, str], ...] = ()
        if path.startswith("/-/"):
            return self._lifecycle_get(request, path)
        if path == "/metrics":
            body, content_type = self._metrics()
            if self._listener_registry is not None:
                body += render(self._listener_registry)[0]
        elif path == "/api/v1/targets":
            body = json.dumps(targets_document(
                self._snapshot(), getattr(self._lifecycle, "owner", lambda cluster: None),
                getattr(self._lifecycle, "reported", lambda: ())(), getattr(self._lifecycle, "instance_id", None)),
                indent=1).encode()
            content_type = "application/json"
        elif path in PAGE_PATHS:
            page = serve_page(path, request.path.partition("?")[2], self._snapshot, self._actions, time.time(),
                              getattr(self._lifecycle, "reported", lambda: ()))
            return send(request, page.status, page.content_type, page.body, compressible=True, headers=page.headers)
        elif path == "/api/v1/actions" or path.startswith("/api/v1/actions/"):
            if self._actions is None:
                return send_json(request, 404, {"error": "actions are not enabled"})
            return send_json(request, *self._actions.get(path, request.headers.get("Authorization")))
        else:
            body, content_type = b'{"error":"not found"}', "application/json"
            return send(request, 404, content_type, body)
        send(request, 200, content_type, body, compressible=True, headers=headers)

    def _lifecycle_get(self, request: BaseHTTPRequestHandler, path: str) -> None:
        """`/-/healthy`: 200 while the process serves; `/-/ready`: 200 once every agent was
        polled after start, else 503; `/-/reload` takes POST only."""
        if path == "/-/healthy":
            return send(request, 200, "text/plain; charset=utf-8", b"replicante-poller is healthy\n")
        if path == "/-/ready":
            ok, note = self._lifecycle.ready() if self._lifecycle is not None else (True, "ready")
            return send(request, 200 if ok else 503, "text/plain; charset=utf-8", note.encode() + b"\n")
        if path == "/-/reload":
            return send(request, 405, "text/plain; charset=utf-8", b"POST /-/reload reloads the configuration\n",
                        headers=(("Allow", "POST"),))
        return send_json(request, 404, {"error": "not found"})

    def _not_allowed(self, request: BaseHTTPRequestHandler) -> None:
        """PUT, DELETE, PATCH, OPTIONS: 405 in JSON, as every other answer of this API (its
        body, if any, is never read: the connection closes)."""
        request.close_connection = True
        send(request, 405, "application/json",
             json.dumps({"error": f"{request.command} is not a method of this API: GET, HEAD or POST"}).encode(),
             headers=(("Allow", "GET, HEAD, POST"),))

    def _post(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/-/reload" and self._lifecycle is not None:
            if request.headers.get("Content-Length", "0") not in ("", "0") or "Transfer-Encoding" in request.headers:
                request.close_connection = True  # a body is never read: never parsed as the next request
            ok, note = self._lifecycle.reload()
            return send_json(request, 200 if ok else 500, {"reloaded": ok, "message": note})
        cancel = CANCEL_PATH.fullmatch(path)
        if cancel is not None and self._actions is not None:
            if request.headers.get("Content-Length", "0") not in ("", "0") or "Transfer-Encoding" in request.headers:
                request.close_connection = True  # a body is never read: never parsed as the next request
            return send_json(request, *self._actions.cancel(cancel.group(1), request.headers.get("Authorization")))
        if path != "/api/v1/actions" or self._actions is None:
            return send_json(request, 404, {"error": "not found"})
        length = request.headers.get("Content-Length", "")
        if not DIGITS.fullmatch(length):
            return send_json(request, 411, {"error": "Content-Length required"})
        if int(length) > MAX_BODY:
            request.close_connection = True
            return send_json(request, 413, {"error": f"body over {MAX_BODY} bytes"})
        body = request.rfile.read(int(length))
        send_json(request, *self._actions.post(request.headers.get("Authorization"), body))
