"""Leader election for the action dispatcher: kazoo's Lock recipe under `{path}/leader`, so
exactly one instance dispatches (DESIGN section 9).

The election thread contends while the session is connected; once it holds the lock it
checks that the znode belongs to its current session, calls `on_elected(fence)` with the
znode's path (the journal's writes check it: a deposed leader cannot write) and waits. The
first sign of trouble (SUSPENDED or LOST) deposes it at once, `on_deposed()` (the
dispatcher stops), before the server can expire the session and elect another: a
suspended leader does not dispatch, so two never do. Back on a connection, its old znode,
if the session survived, is deleted before it contends again (else it would wait behind
itself). kazoo's listener only records the state; this class's thread does the rest.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import CancelledError, KazooException, NoNodeError
from kazoo.recipe.lock import Lock

from ..config import CoordinationSettings
from ..errors import PollerError
from .zookeeper import plain

log = logging.getLogger(__name__)
OP_TIMEOUT = 10.0  # seconds for the election's own requests
RETRY_WAIT = 1.0  # after a failed attempt to contend


class Election:
    """Runs `on_elected(fence)` / `on_deposed()` on its thread as leadership comes and goes."""

    def __init__(self, client: KazooClient, settings: CoordinationSettings, identifier: str,
                 on_elected: Callable[[str], None], on_deposed: Callable[[], None],
                 on_error: Callable[[str], None] = lambda name: None):
        self._client, self._identifier = client, identifier
        self._on_elected, self._on_deposed, self._on_error = on_elected, on_deposed, on_error
        self._path = settings.path.rstrip("/") + "/leader"
        self._changed = threading.Condition()
        self._connected = False
        self._troubled = False  # suspended or lost since the lock was taken
        self._stopping = False
        self._leader = False
        self._lock: Optional[Lock] = None  # the lock being contended for (cancelled at stop)
        self._stale: Optional[str] = None  # a previous term's znode, deleted before contending again
        self._thread = threading.Thread(target=self._run, name="election", daemon=True)
        client.add_listener(self._state)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Leave the election: a leader is deposed first (its dispatcher stopped), then its
        znode deleted (if connected), so a successor starts without waiting for the session.
        False when the thread did not end within `timeout`: a contender blocked in kazoo's
        lock while ZooKeeper is away ends once the client is closed (`join` then)."""
        with self._changed:
            self._stopping = True
            lock = self._lock
            self._changed.notify_all()
        if lock is not None:
            lock.cancel()
        return self.join(timeout)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the election thread to end; whether it did."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def leader(self) -> float:
        """1.0 while this instance is the dispatcher leader (the `coordination_leader` metric)."""
        return 1.0 if self._leader else 0.0

    def _state(self, state: str) -> bool:
        """kazoo's connection listener (its thread): record, wake the election thread."""
        with self._changed:
            self._connected = state == KazooState.CONNECTED
            if not self._connected:
                self._troubled = True
            self._changed.notify_all()
        return False  # stay registered

    def _wait(self, condition: Callable[[], bool], timeout: Optional[float] = None) -> bool:
        """Wait for `condition` or stop; False when stopping."""
        with self._changed:
            self._changed.wait_for(lambda: self._stopping or condition(), timeout)
            return not self._stopping

    def _run(self) -> None:
        while self._wait(lambda: self._connected):
            try:
                self._term()
            except CancelledError:
                continue
            except (KazooException, self._client.handler.timeout_exception) as exc:
                if not self._stopping:
                    log.warning("election: ZooKeeper request failed (%s), contending again", plain(exc))
                self._wait(lambda: False, RETRY_WAIT)
            except PollerError as exc:  # the leader could not take over (its journal unreadable ...)
                log.error("election: stepped down: %s", exc)
                self._wait(lambda: False, RETRY_WAIT)
            except Exception:
                log.exception("election error")
                self._on_error("election")
                self._wait(lambda: False, RETRY_WAIT)

    def _term(self) -> None:
        """Contend, lead while nothing is wrong, step down."""
        if self._stale is not None:
            try:
                self._client.delete_async(self._stale).get(timeout=OP_TIMEOUT)
            except NoNodeError:
                pass
            self._stale = None
        lock = self._client.Lock(self._path, self._identifier)
        with self._changed:
            if self._stopping:
                return
            self._lock, self._troubled = lock, False
        try:
            acquired = lock.acquire()
        finally:
            with self._changed:
                self._lock = None
            if lock.node is not None:  # ours in any case: deleted before contending again (a
                self._stale = f"{self._path}/{lock.node}"  # surviving session would wait behind it)
        if not acquired:
            return
        fence = f"{self._path}/{lock.node}"
        stat = self._client.exists_async(fence).get(timeout=OP_TIMEOUT)
        if stat is None or stat.ephemeralOwner != self._client.client_id[0]:
            log.warning("election: the lock znode is not this session's, contending again")
            return
        if not self._wait(lambda: True) or self._troubled:
            return
        self._leader = True  # before the line: coordination_leader agrees with it
        log.info("election: this instance is the dispatcher leader (%s)", fence)
        try:
            self._on_elected(fence)
            self._wait(lambda: self._troubled)
        finally:
            self._leader = False
            self._on_deposed()
            log.info("election: no longer the dispatcher leader%s",
                     "" if self._stopping else " (ZooKeeper connection trouble)")
        if self._stopping and self._connected:
            try:
                self._client.delete_async(fence).get(timeout=OP_TIMEOUT)
                self._stale = None
            except (KazooException, self._client.handler.timeout_exception):
                pass  # the session's end removes it
