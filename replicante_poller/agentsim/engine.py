"""The one executor thread of a simulator: every node's action steps and housekeeping.

One Condition guards every node's action book: request handlers store actions and notify
it, the executor waits on it for the next due piece of work (an action step, a replisdk
node's executor tick, the legacy pruner, the replisdk cleaner), and `wait_for` waits on it
too. Work runs under the Condition and never blocks.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Union

from .wire import Request

_log = logging.getLogger(__package__)  # the simulator's one logger, whichever module logs

NEW, RUNNING, DONE, FAILED = "NEW", "RUNNING", "DONE", "FAILED"
# not agent states: what happened to a stored action, for wait_for_state
FORGOTTEN = "FORGOTTEN"  # dropped as if the agent's DB was wiped (test.forget, AgentSim.forget)
PRUNED = "PRUNED"  # deleted by the agent's retention (legacy: newest 100 kept; replisdk: clean_age)

# verifier(method, path, headers, body): True accepts a schedule request; False, None, a reason
# string, any other value or an exception refuses it with 401 (fail closed).
Verifier = Callable[[str, str, Mapping[str, str], bytes], Union[bool, str, None]]


class Book(Protocol):
    """One node's actions, whichever generation (guarded by the engine's Condition)."""

    verifier: Verifier | None  # this node's own (enforcing mode); else the engine's
    posts: int  # schedule POSTs received: duplicates and refused ones too
    executions: dict[str, int]  # action id -> times its execution started
    reached: dict[str, list[str]]  # action id -> states entered (FORGOTTEN, PRUNED included)

    def records(self) -> list[dict[str, Any]]: ...

    def forget(self, action_id: str) -> bool: ...

    def housekeep(self, engine: ActionEngine) -> None: ...


class ActionEngine:
    """The actions API's executor for every node of one simulator.

    `step_seconds` is each step of an action (legacy) or each tick of a node's executor
    (replisdk). `clean_age` is replisdk's retention of finished actions, `prune_interval`
    how often legacy agents prune theirs to the newest 100.
    """

    def __init__(self, enabled: bool, step_seconds: float, verifier: Verifier | None,
                 stop: threading.Event, clean_age: float = 14 * 86400.0,
                 prune_interval: float = 3600.0) -> None:
        if step_seconds < 0:
            raise ValueError("action_seconds must not be negative")
        if clean_age < 0:
            raise ValueError("clean_age must not be negative")
        if prune_interval <= 0:
            raise ValueError("prune_interval must be positive")
        self.enabled = enabled
        self.step = step_seconds
        self.clean_age = clean_age
        self.verifier = verifier
        self.prune_interval = prune_interval
        self.cond = threading.Condition()
        self._stop = stop
        self._due: list[tuple[float, int, Callable[[], None]]] = []  # heap: (monotonic due, seq, work)
        self._seq = itertools.count()
        self._books: list[Book] = []
        self._thread: threading.Thread | None = None

    def add(self, book: Book) -> None:
        """Register a node's book for housekeeping (before start)."""
        self._books.append(book)

    def start(self) -> None:
        if self.enabled:
            with self.cond:
                self.later(self.prune_interval, self._housekeeping)
            self._thread = threading.Thread(target=self._run, name="agentsim-actions", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Wake and join the executor; the shared stop event is already set."""
        with self.cond:
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    # for the books (caller holds the Condition)

    def later(self, delay: float, work: Callable[[], None]) -> None:
        """Run `work` on the executor `delay` seconds from now."""
        heapq.heappush(self._due, (time.monotonic() + delay, next(self._seq), work))
        self.cond.notify_all()

    def verified(self, verifier: Verifier | None, request: Request, body: bytes) -> bool:
        """The node's (or the simulator's) verifier accepts the request; True without one."""
        verifier = verifier or self.verifier
        if verifier is None:
            return True
        try:
            verdict = verifier(request.method, request.path, dict(request.headers), body)
        except Exception as exc:  # fail closed: a verifier may refuse by raising
            verdict = f"verifier raised {exc!r}"
        if verdict is True:
            return True
        _log.info("agent-sim refused a schedule request to %s: %s", request.path, verdict or "not verified")
        return False

    # the executor thread

    def _run(self) -> None:
        with self.cond:
            while not self._stop.is_set():
                delay = self._due[0][0] - time.monotonic() if self._due else None
                if delay is None or delay > 0:
                    self.cond.wait(delay)
                    continue
                _, _, work = heapq.heappop(self._due)
                try:
                    work()
                except Exception:  # a bug in the simulator itself
                    _log.exception("agent-sim action executor failed")
                self.cond.notify_all()

    def _housekeeping(self) -> None:
        """The periodic pass (legacy agents prune hourly); books without one ignore it."""
        for book in self._books:
            book.housekeep(self)
        self.later(self.prune_interval, self._housekeeping)

    # the record (any thread)

    def read(self, read: Callable[[], Any]) -> Any:
        """`read()` under the Condition (a consistent view of a book)."""
        with self.cond:
            return read()

    def forget(self, book: Book, action_id: str) -> bool:
        with self.cond:
            forgotten = book.forget(action_id)
            self.cond.notify_all()
            return forgotten

    def wait_for_state(self, book: Book, action_id: str, state: str, timeout: float) -> bool:
        action_id = action_id.lower()
        with self.cond:
            return self.cond.wait_for(lambda: state in book.reached.get(action_id, ()), timeout)
