"""The actions API of simulated agents: per-node books and the one executor thread.

Actions move NEW -> RUNNING -> final, one step every `step_seconds`; a kind ending in
`test.fail` ends FAILED, one ending in `test.forget` is dropped (FORGOTTEN), any other DONE.
"""
from __future__ import annotations

import copy
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Union

from ..agentapi import ACTION_INFO_PREFIX, ACTIONS_FINISHED, ACTIONS_QUEUE, SCHEDULE_PREFIX
from ..durations import rfc3339_seconds
from ..limits import MAX_SCHEDULE_BODY
from .api import EMPTY_404, NOT_ALLOWED, NOT_FOUND, dumps, error
from .schedule import InvalidArgs, parse_schedule
from .wire import Request, Response, response

_log = logging.getLogger(__package__)  # the simulator's one logger, whichever module logs

NEW, RUNNING, DONE, FAILED = "NEW", "RUNNING", "DONE", "FAILED"
FORGOTTEN = "FORGOTTEN"  # not an agent state: the node dropped the action (the caller sees it LOST)
MAX_ACTION_BODY = MAX_SCHEDULE_BODY  # as released agents: larger schedule bodies get an empty 413

# verifier(method, path, headers, body): True accepts a schedule request; False, None, a reason
# string, any other value or an exception refuses it with 401 (fail closed).
Verifier = Callable[[str, str, Mapping[str, str], bytes], Union[bool, str, None]]

_POST_ONLY = error(405, "method not allowed", "MethodNotAllowed", "Allow: POST\r\n")
_LENGTH_REQUIRED = error(411, "request body needs a Content-Length", "LengthRequired")
_TOO_LARGE = response(413, content_type=None)
_EXPECTATION_FAILED = error(417, "Expect is not supported: send the body directly", "ExpectationFailed")
_UNAUTHORIZED = response(401, dumps({"error": "unauthorized"}))
_ALREADY_EXISTS = error(409, "action already exists", "ActionAlreadyExists")


@dataclasses.dataclass
class Action:
    """One stored action of one node."""

    id: str
    kind: str
    args: Any
    created_ts: str
    requester: str
    scheduled_ts: str
    headers: dict[str, str]  # of the schedule request: recorded for tests, not served
    state: str = NEW
    state_payload: dict[str, object] | None = None
    finished_ts: str | None = None
    history: list[dict[str, object]] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "state": self.state}

    def info(self) -> dict[str, object]:
        action = {"args": self.args, "created_ts": self.created_ts, "finished_ts": self.finished_ts,
                  "headers": {}, "id": self.id, "kind": self.kind, "requester": self.requester,
                  "scheduled_ts": self.scheduled_ts, "state": self.state, "state_payload": self.state_payload}
        return {"action": action, "history": self.history}


@dataclasses.dataclass
class ActionBook:
    """One node's actions, and the record tests read (posts, executions, states reached)."""

    verifier: Verifier | None = None  # this node's own (enforcing mode); else the engine's
    stored: dict[str, Action] = dataclasses.field(default_factory=dict)  # in scheduling order
    finished: list[str] = dataclasses.field(default_factory=list)  # DONE/FAILED ids, finishing order
    posts: int = 0
    executions: dict[str, int] = dataclasses.field(default_factory=dict)
    reached: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # FORGOTTEN included

    def enter(self, action: Action, state: str, payload: dict[str, object] | None, timestamp: str) -> None:
        action.state, action.state_payload = state, payload
        action.history.append({"action_id": action.id, "timestamp": timestamp, "state": state,
                               "state_payload": payload})
        self.reached.setdefault(action.id, []).append(state)


class ActionEngine:
    """The actions API of every node of one simulator, and its one executor thread.

    One Condition guards every node's book: request handlers store actions and notify it,
    the executor waits on it for the next due step, `wait_for_state` waits on it too.
    """

    def __init__(self, enabled: bool, step_seconds: float, verifier: Verifier | None,
                 stop: threading.Event) -> None:
        self.enabled = enabled
        self._step = step_seconds
        self._verifier = verifier
        self._stop = stop
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, ActionBook, str]] = []  # heap: (monotonic due, seq, book, id)
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="agentsim-actions", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Wake and join the executor; the shared stop event is already set."""
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    # request handling (connection threads)

    def route(self, book: ActionBook, request: Request, body: bytes) -> Response:
        path, method = request.path, request.method
        if path.startswith(SCHEDULE_PREFIX) and method == "POST":
            with self._cond:
                book.posts += 1
        if not self.enabled:
            return EMPTY_404
        if path.startswith(SCHEDULE_PREFIX) and len(path) > len(SCHEDULE_PREFIX):
            if method != "POST":
                return _POST_ONLY
            return self._schedule(book, path[len(SCHEDULE_PREFIX):], request, body)
        if path not in (ACTIONS_QUEUE, ACTIONS_FINISHED) and not path.startswith(ACTION_INFO_PREFIX):
            return NOT_FOUND
        if method != "GET":
            return NOT_ALLOWED
        with self._cond:
            if path == ACTIONS_QUEUE:
                reply: object = [a.summary() for a in book.stored.values() if a.state in (NEW, RUNNING)]
            elif path == ACTIONS_FINISHED:
                reply = [book.stored[action_id].summary() for action_id in reversed(book.finished)]
            else:
                # The id as given: real agents look it up as a string (SQLite `WHERE id = ?`),
                # so an upper-case spelling of a stored (lower-case) UUID is unknown.
                action = book.stored.get(path[len(ACTION_INFO_PREFIX):])
                if action is None:
                    return EMPTY_404
                reply = action.info()
            return response(200, dumps(reply))

    def _schedule(self, book: ActionBook, kind: str, request: Request, body: bytes) -> Response:
        """Size, then verification (the hook for signatures), then the body, then idempotency."""
        if "transfer-encoding" in request.headers:
            return _LENGTH_REQUIRED
        if request.content_length > MAX_ACTION_BODY:
            return _TOO_LARGE
        if request.body_length < 0:  # Expect: 100-continue, the body was not read
            return _EXPECTATION_FAILED
        verifier = book.verifier or self._verifier
        if verifier is not None and not self._verified(verifier, request, body):
            return _UNAUTHORIZED
        try:
            schedule = parse_schedule(request.headers.get("content-type", ""), body)
        except InvalidArgs as exc:
            return response(400, dumps({"error": str(exc), "kind": "InvalidArgs"}))
        with self._cond:
            if schedule.action_id in book.stored:
                return _ALREADY_EXISTS
            now = rfc3339_seconds(time.time())
            action = Action(schedule.action_id, kind, schedule.args, schedule.created_ts,
                            schedule.requester, now, dict(request.headers))
            book.stored[action.id] = action
            book.enter(action, NEW, None, now)
            self._next_step(book, action.id)
        return response(200, dumps({"id": schedule.action_id}))

    @staticmethod
    def _verified(verifier: Verifier, request: Request, body: bytes) -> bool:
        try:
            verdict = verifier(request.method, request.path, dict(request.headers), body)
        except Exception as exc:  # fail closed: a verifier may refuse by raising
            verdict = f"verifier raised {exc!r}"
        if verdict is True:
            return True
        _log.info("agent-sim refused a schedule request to %s: %s", request.path, verdict or "not verified")
        return False

    # execution (the executor thread)

    def _next_step(self, book: ActionBook, action_id: str) -> None:
        heapq.heappush(self._due, (time.monotonic() + self._step, next(self._seq), book, action_id))
        self._cond.notify_all()

    def _run(self) -> None:
        with self._cond:
            while not self._stop.is_set():
                delay = self._due[0][0] - time.monotonic() if self._due else None
                if delay is None or delay > 0:
                    self._cond.wait(delay)
                    continue
                _, _, book, action_id = heapq.heappop(self._due)
                try:
                    self._advance(book, action_id)
                except Exception:  # a bug in the simulator itself
                    _log.exception("agent-sim action executor failed on %s", action_id)
                self._cond.notify_all()

    def _advance(self, book: ActionBook, action_id: str) -> None:
        """NEW -> RUNNING (one execution); RUNNING -> DONE, FAILED, or forgotten, by kind."""
        action = book.stored.get(action_id)
        if action is None:
            return
        now = rfc3339_seconds(time.time())
        if action.state == NEW:
            book.executions[action_id] = book.executions.get(action_id, 0) + 1
            book.enter(action, RUNNING, None, now)
            self._next_step(book, action_id)
        elif action.kind.endswith("test.forget"):
            del book.stored[action_id]
            book.reached[action_id].append(FORGOTTEN)
        else:
            failed = action.kind.endswith("test.fail")
            action.finished_ts = now
            book.enter(action, FAILED if failed else DONE, {"error": "simulated failure"} if failed else None, now)
            book.finished.append(action_id)

    # the record (any thread)

    def posts(self, book: ActionBook) -> int:
        with self._cond:
            return book.posts

    def actions(self, book: ActionBook) -> list[dict[str, Any]]:
        with self._cond:
            return [{"id": a.id, "kind": a.kind, "args": copy.deepcopy(a.args), "state": a.state,
                     "headers": dict(a.headers)} for a in book.stored.values()]

    def executions(self, book: ActionBook) -> dict[str, int]:
        with self._cond:
            return dict(book.executions)

    def wait_for_state(self, book: ActionBook, action_id: str, state: str, timeout: float) -> bool:
        action_id = action_id.lower()
        with self._cond:
            return self._cond.wait_for(lambda: state in book.reached.get(action_id, ()), timeout)
