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
from typing import Any, BinaryIO, Union

from ..agentapi import ACTION, ACTION_PREFIX, ACTIONS_INDEX, ACTIONS_PREFIX, LEGACY, REPLISDK
from ..agentside.replay import ReplayStore
from ..fdlimit import ensure_fd_limit
from ..agentside.verifier import Keyring
from ..agentside.verifier import Verifier as SignatureVerifier
from . import bodies, replisdk
from .actions import ActionBook
from .api import BAD_REQUEST, EMPTY_404, NOT_ALLOWED, NOT_FOUND
from .engine import ActionEngine, Book, Verifier
from .faults import Fault, NodeSpec
from .sdkactions import SdkBook
from .sdkrequest import MAX_JSON_BODY
from .wire import MAX_DISCARD, BadRequest, Compressible, Request, Response, Route, hold, linger, read_request

_log = logging.getLogger(__package__)  # the simulator's one logger, whichever module logs

IDLE_TIMEOUT = 60.0  # seconds a connection may sit idle (or mid-handshake) before it is dropped
CLEAN_AGE = 14 * 86400.0  # replisdk agents delete finished actions this long after they finish
PRUNE_INTERVAL = 3600.0  # legacy agents prune finished actions to the newest 100 this often

# one server context for every node, or one per agent generation (see tls.server_contexts)
ServerContexts = Union[ssl.SSLContext, Mapping[str, ssl.SSLContext]]


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
    book: Book  # guarded by the engine
    context: ssl.SSLContext | None
    seen: int = 0


class AgentSim:
    """HTTPS agents for `nodes` on loopback; a context manager (start/stop)."""

    def __init__(self, nodes: Sequence[NodeSpec], ssl_context: ServerContexts | None,
                 host: str = "127.0.0.1", drip_seconds: float = 1.0, actions: bool = True,
                 action_seconds: float = 0.2, verifier: Verifier | None = None,
                 keyring: Keyring | None = None, clean_age: float = CLEAN_AGE,
                 prune_interval: float = PRUNE_INTERVAL) -> None:
        """`ssl_context` is one server context for every node, or a mapping from generation
        ("legacy", "replisdk") to the context of that generation's nodes (`server_contexts`
        builds them as real agents have them); None serves plain HTTP, as an agent behind a
        TLS-terminating nginx.

        `actions` False: every actions path answers 404 with an empty body. `action_seconds`
        is each step of a legacy action (NEW -> RUNNING -> final) and each tick of a replisdk
        node's executor. `verifier(method, path, headers, body)` is asked before a schedule
        request (legacy POST /actions/schedule/*, replisdk POST /action) is stored: anything but
        True refuses it (401). `keyring` turns on the enforcing mode: each node checks
        signatures with the package's own Verifier, for its own cluster and node id (replays
        remembered in memory). `clean_age`: replisdk agents delete finished actions that old
        (seconds); `prune_interval`: legacy agents keep only their newest 100 finished actions,
        pruned this often (seconds).
        """
        if action_seconds < 0:
            raise ValueError("action_seconds must not be negative")
        if verifier is not None and not callable(verifier):
            raise TypeError("verifier must be callable")
        self._nodes = list(nodes)
        self._contexts = _contexts_by_generation(ssl_context, {spec.generation for spec in self._nodes})
        self._stop = threading.Event()
        self._engine = ActionEngine(actions, action_seconds, verifier, self._stop, clean_age, prune_interval)
        self._host = host
        self._drip_seconds = drip_seconds
        self._lock = threading.Lock()
        self._agents: list[_Agent] = []
        self._by_url: dict[str, _Agent] = {}
        self._conns: set[_Conn] = set()
        self._acceptor: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._keyring = keyring
        self._replay = ReplayStore(":memory:") if keyring is not None else None

    def _enforcing(self, spec: NodeSpec, url: str) -> Verifier | None:
        """The node's signature check in enforcing mode (for its own URL, cluster and node
        ids): True, or the refusal reason."""
        if self._keyring is None or self._replay is None:
            return None
        check = SignatureVerifier(self._keyring, spec.cluster_id, spec.node_id, self._replay, agent_urls=[url])

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
                primary = spec.cluster_id not in primaries
                primaries.add(spec.cluster_id)
                book: Book = (ActionBook() if spec.generation == LEGACY else SdkBook(
                    spec.kind, "UNAVAILABLE" if spec.fault is Fault.NODE_DOWN else spec.node_status, primary))
                context = self._contexts.get(spec.generation)
                self._agents.append(_Agent(spec, listener, "", {}, book, context))
                listener.bind((bind_host, 0))
                listener.listen(128)
                listener.setblocking(False)
                agent = self._agents[-1]
                scheme = "http" if context is None else "https"
                agent.url = f"{scheme}://{url_host}:{listener.getsockname()[1]}"
                agent.routes = (bodies if spec.generation == LEGACY else replisdk).routes(spec, primary)
                book.verifier = self._enforcing(spec, agent.url)
                self._engine.add(book)
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
        """Schedule POSTs the agent at `url` received (legacy: /actions/schedule/*, replisdk:
        /action): duplicates and refused ones too."""
        book = self._agent(url).book
        return self._engine.read(lambda: book.posts)

    def actions(self, url: str) -> list[dict[str, Any]]:
        """The actions the agent at `url` stores, in scheduling order: id, kind, args, state
        (replisdk: its phase) and the headers of the schedule request (lower-case names;
        repeats joined with ", ")."""
        return self._engine.read(self._agent(url).book.records)

    def executions(self, url: str) -> dict[str, int]:
        """Action id -> how many times the agent at `url` started executing it."""
        book = self._agent(url).book
        return self._engine.read(lambda: dict(book.executions))

    def wait_for_state(self, url: str, action_id: str, state: str, timeout: float) -> bool:
        """Wait until the action has reached `state` (NEW, RUNNING, DONE, FAILED; FORGOTTEN once
        dropped by `forget` or a legacy test.forget action; PRUNED once deleted by the agent's
        retention); False on timeout. Reached earlier counts too."""
        return self._engine.wait_for_state(self._agent(url).book, action_id, state, timeout)

    def forget(self, url: str, action_id: str) -> bool:
        """Drop one action from the agent at `url`, as if its DB was wiped (both generations):
        every API of the agent stops knowing it. False when the agent does not store it."""
        return self._engine.forget(self._agent(url).book, action_id.lower())

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
            if agent.context is not None:
                with self._lock:  # wrapping detaches the raw socket: swap it where stop() looks
                    if self._stop.is_set():
                        return
                    conn.sock = agent.context.wrap_socket(conn.sock, server_side=True,
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
        # bodies up to max_body are read; larger ones are answered, then drained as long (linger)
        max_body = 2 * MAX_JSON_BODY if agent.spec.generation == REPLISDK else MAX_DISCARD
        while not self._stop.is_set():
            try:
                request = read_request(rfile.readline, max_body)
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
            if isinstance(answer, Compressible):
                answer = answer.pick(request.headers.get("accept-encoding", ""))
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
                    linger(sock, max_body)
                return

    def _route(self, agent: _Agent, request: Request, body: bytes) -> Route:
        path = request.path
        if agent.spec.generation == LEGACY:
            if path.startswith(ACTIONS_PREFIX) or path == ACTIONS_INDEX:  # dynamic; the rest is pre-serialised
                return agent.book.route(self._engine, request, body)
            answer = agent.routes.get(path)
            if answer is None:
                return NOT_FOUND
            return answer if request.method == "GET" else NOT_ALLOWED
        if path == ACTION or path.startswith(ACTION_PREFIX) or path.startswith(ACTIONS_PREFIX):
            return agent.book.route(self._engine, request, body)
        answer = agent.routes.get(path)
        if answer is None or request.method != "GET":  # actix-web's method guards: no route
            return EMPTY_404
        return answer

    def _drip(self, sock: socket.socket, data: bytes) -> bool:
        """Send one byte every drip_seconds; False when stop() interrupted it."""
        view = memoryview(data)
        for i in range(len(view)):
            if i and self._stop.wait(self._drip_seconds):
                return False
            sock.sendall(view[i:i + 1])
        return True


def _contexts_by_generation(given: ServerContexts | None, generations: set[str]) -> dict[str, ssl.SSLContext]:
    """The server context of each generation's nodes (empty: plain HTTP)."""
    if given is None:
        return {}
    if isinstance(given, ssl.SSLContext):
        return {generation: given for generation in generations}
    if not isinstance(given, Mapping):
        raise TypeError("ssl_context must be an ssl.SSLContext, a mapping of generation to SSLContext, or None")
    missing = sorted(generations - set(given))
    if missing:
        raise ValueError(f"ssl_context has no server context for the {', '.join(missing)} generation")
    return {generation: given[generation] for generation in generations}


def _ensure_fd_limit(needed: int) -> None:
    """Raise the soft open-files limit towards the hard one when thousands of ports are bound."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    try:
        ensure_fd_limit(needed)
    except ValueError:
        ensure_fd_limit(hard)  # as far as it goes: binding will say what did not fit
