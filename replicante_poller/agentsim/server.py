"""AgentSim: one listener per simulated node, one acceptor thread, one thread per connection."""
from __future__ import annotations

import dataclasses
import errno
import logging
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from ..agentapi import ACTIONS_PREFIX
from ..agentside.replay import ReplayStore
from ..agentside.verifier import Keyring
from ..agentside.verifier import Verifier as SignatureVerifier
from .actions import ActionBook, ActionEngine, Verifier
from .api import BAD_REQUEST, NOT_ALLOWED, NOT_FOUND
from .bodies import routes
from .faults import Fault, NodeSpec
from .wire import BadRequest, Request, Response, Route, hold, linger, read_request

_log = logging.getLogger(__package__)  # the simulator's one logger, whichever module logs

IDLE_TIMEOUT = 60.0  # seconds a connection may sit idle (or mid-handshake) before it is dropped


@dataclasses.dataclass(eq=False)
class _Conn:
    sock: socket.socket
    thread: threading.Thread | None = None


@dataclasses.dataclass
class _Agent:
    spec: NodeSpec
    listener: socket.socket
    url: str
    routes: dict[str, Route]
    seen: int = 0
    book: ActionBook = dataclasses.field(default_factory=ActionBook)  # guarded by the engine


class AgentSim:
    """HTTPS agents for `nodes` on loopback; a context manager (start/stop)."""

    def __init__(self, nodes: Sequence[NodeSpec], ssl_context: ssl.SSLContext | None,
                 host: str = "127.0.0.1", drip_seconds: float = 1.0, actions: bool = True,
                 action_seconds: float = 0.2, verifier: Verifier | None = None,
                 keyring: Keyring | None = None) -> None:
        """`ssl_context` None serves plain HTTP, as an agent behind a TLS-terminating nginx.

        `actions` False: every /actions/* path answers 404 with an empty body. Actions take
        `action_seconds` per step (NEW -> RUNNING -> final). `verifier(method, path, headers,
        body)` is asked before a schedule request is stored: anything but True refuses it (401).
        `keyring` turns on the enforcing mode: each node checks signatures with the package's
        own Verifier, for its own cluster and node id (replays remembered in memory).
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
        self._engine = ActionEngine(actions, action_seconds, verifier, self._stop)
        self._keyring = keyring
        self._replay = ReplayStore(":memory:") if keyring is not None else None

    def _enforcing(self, spec: NodeSpec) -> Verifier | None:
        """The node's signature check in enforcing mode: True, or the refusal reason."""
        if self._keyring is None or self._replay is None:
            return None
        check = SignatureVerifier(self._keyring, spec.cluster_id, spec.node_id, self._replay)

        def verify(method: str, path: str, headers: Mapping[str, str], body: bytes) -> bool | str:
            verdict = check.verify(method, path, headers, body)
            return True if verdict.accepted else f"{verdict.reason.value if verdict.reason else '?'}: {verdict.detail}"

        return verify

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
                agent.routes = routes(spec, spec.cluster_id not in primaries)
                agent.book.verifier = self._enforcing(spec)
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
                hold(conn.sock)  # not a byte of TLS, not even a ServerHello
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
                request = read_request(rfile.readline)
            except BadRequest:
                sock.sendall(BAD_REQUEST.wire(close=True))
                return
            if request is None:
                return
            with self._lock:
                agent.seen += 1
            if agent.spec.fault is Fault.HANGING:
                hold(sock)
                return
            body = rfile.read(request.body_length) if request.body_length > 0 else b""
            if len(body) < request.body_length:
                return
            answer = self._route(agent, request, body)
            if not isinstance(answer, Response):
                answer.serve(sock, self._stop)  # a hostile answer owns the rest of the connection
                return
            data = answer.wire(request.close, head_only=request.method == "HEAD")
            if agent.spec.fault is Fault.SLOW:
                if not self._drip(sock, data):
                    return
            else:
                sock.sendall(data)
            if request.close:
                if request.body_length < 0:
                    linger(sock)
                return

    def _route(self, agent: _Agent, request: Request, body: bytes) -> Route:
        if request.path.startswith(ACTIONS_PREFIX):  # dynamic; everything else is pre-serialised
            return self._engine.route(agent.book, request, body)
        answer = agent.routes.get(request.path)
        if answer is None:
            return NOT_FOUND
        return answer if request.method == "GET" else NOT_ALLOWED

    def _drip(self, sock: socket.socket, data: bytes) -> bool:
        """Send one byte every drip_seconds; False when stop() interrupted it."""
        view = memoryview(data)
        for i in range(len(view)):
            if i and self._stop.wait(self._drip_seconds):
                return False
            sock.sendall(view[i:i + 1])
        return True


def _ensure_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards the hard one when thousands of ports are bound."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
