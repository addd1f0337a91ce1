"""The legacy actions API (`/api/unstable/actions/*`) of simulated agents: one book per node.

Actions move NEW -> RUNNING -> final, one step every `step_seconds` each; a kind ending in
`test.fail` ends FAILED, one ending in `test.forget` is dropped (FORGOTTEN), any other DONE.
As released agents (replicante-io/agents, SQLite store): the queue (oldest first) and the
finished list (newest first) show at most 100 actions, and a pruner keeps only the newest
100 finished actions, hourly (`prune_interval`).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from typing import Any

from ..agentapi import ACTION_INFO_PREFIX, ACTIONS_FINISHED, ACTIONS_INDEX, ACTIONS_PREFIX, ACTIONS_QUEUE, SCHEDULE_PREFIX
from ..durations import rfc3339_seconds
from ..limits import MAX_SCHEDULE_BODY
from .api import EMPTY_404, NOT_ALLOWED, NOT_FOUND, dumps, error
from .engine import DONE, FAILED, FORGOTTEN, NEW, PRUNED, RUNNING, ActionEngine, Verifier
from .schedule import InvalidArgs, parse_schedule
from .wire import Request, Response, response

MAX_ACTION_BODY = MAX_SCHEDULE_BODY  # as released agents: larger schedule bodies get an empty 413
LIST_LIMIT = 100  # rows of /actions/queue and /actions/finished (SQL LIMIT 100)
PRUNE_KEEP = 100  # finished actions the hourly pruner keeps, newest first

_POST_ONLY = error(405, "method not allowed", "MethodNotAllowed", "Allow: POST\r\n")
_LENGTH_REQUIRED = error(411, "request body needs a Content-Length", "LengthRequired")
_TOO_LARGE = response(413, content_type=None)
_EXPECTATION_FAILED = error(417, "Expect is not supported: send the body directly", "ExpectationFailed")
_UNAUTHORIZED = response(401, dumps({"error": "unauthorized"}))
_ALREADY_EXISTS = error(409, "action already exists", "ActionAlreadyExists")
_DISABLED, _ENABLED = response(200, dumps({"actions": False})), response(200, dumps({"actions": True}))


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
    """One legacy node's actions, and the record tests read (posts, executions, states reached).

    Guarded by the engine's Condition."""

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

    # the API (connection threads)

    def route(self, engine: ActionEngine, request: Request, body: bytes) -> Response:
        path, method = request.path, request.method
        if path.startswith(SCHEDULE_PREFIX) and method == "POST":
            with engine.cond:
                self.posts += 1
        if not engine.enabled:  # replicante-io/agents sdk api/actions: index_disabled, else nothing
            return _DISABLED if path == ACTIONS_INDEX and method == "GET" else EMPTY_404
        if path == ACTIONS_PREFIX and method == "GET":
            return _ENABLED  # index_enabled, the scope's "/"
        if path.startswith(SCHEDULE_PREFIX) and len(path) > len(SCHEDULE_PREFIX):
            if method != "POST":
                return _POST_ONLY
            return self._schedule(engine, path[len(SCHEDULE_PREFIX):], request, body)
        if path not in (ACTIONS_QUEUE, ACTIONS_FINISHED) and not path.startswith(ACTION_INFO_PREFIX):
            return NOT_FOUND
        if method != "GET":
            return NOT_ALLOWED
        with engine.cond:
            if path == ACTIONS_QUEUE:
                unfinished = (a for a in self.stored.values() if a.state in (NEW, RUNNING))
                reply: object = [a.summary() for a in itertools.islice(unfinished, LIST_LIMIT)]
            elif path == ACTIONS_FINISHED:
                reply = [self.stored[action_id].summary() for action_id in self.finished[:-LIST_LIMIT - 1:-1]]
            else:
                # The id as given: real agents look it up as a string (SQLite `WHERE id = ?`),
                # so an upper-case spelling of a stored (lower-case) UUID is unknown.
                action = self.stored.get(path[len(ACTION_INFO_PREFIX):])
                if action is None:
                    return EMPTY_404
                reply = action.info()
            return response(200, dumps(reply))

    def _schedule(self, engine: ActionEngine, kind: str, request: Request, body: bytes) -> Response:
        """Size, then verification (the hook for signatures), then the body, then idempotency."""
        if "transfer-encoding" in request.headers:
            return _LENGTH_REQUIRED
        if request.content_length > MAX_ACTION_BODY:
            return _TOO_LARGE
        if request.body_length < 0:  # Expect: 100-continue, the body was not read
            return _EXPECTATION_FAILED
        if not engine.verified(self.verifier, request, body):
            return _UNAUTHORIZED
        try:
            schedule = parse_schedule(request.headers.get("content-type", ""), body)
        except InvalidArgs as exc:
            return response(400, dumps({"error": str(exc), "kind": "InvalidArgs"}))
        with engine.cond:
            if schedule.action_id in self.stored:
                return _ALREADY_EXISTS
            now = rfc3339_seconds(time.time())
            action = Action(schedule.action_id, kind, schedule.args, schedule.created_ts,
                            schedule.requester, now, dict(request.headers))
            self.stored[action.id] = action
            self.enter(action, NEW, None, now)
            engine.later(engine.step, lambda: self._advance(engine, action.id))
        return response(200, dumps({"id": schedule.action_id}))

    # execution and housekeeping (the executor thread)

    def _advance(self, engine: ActionEngine, action_id: str) -> None:
        """NEW -> RUNNING (one execution); RUNNING -> DONE, FAILED, or forgotten, by kind."""
        action = self.stored.get(action_id)
        if action is None:
            return
        now = rfc3339_seconds(time.time())
        if action.state == NEW:
            self.executions[action_id] = self.executions.get(action_id, 0) + 1
            self.enter(action, RUNNING, None, now)
            engine.later(engine.step, lambda: self._advance(engine, action_id))
        elif action.kind.endswith("test.forget"):
            self.forget(action_id)
        else:
            failed = action.kind.endswith("test.fail")
            action.finished_ts = now
            self.enter(action, FAILED if failed else DONE, {"error": "simulated failure"} if failed else None, now)
            self.finished.append(action_id)

    def housekeep(self, engine: ActionEngine) -> None:
        """The hourly pruner: only the newest PRUNE_KEEP finished actions stay."""
        for action_id in self.finished[:-PRUNE_KEEP]:
            del self.stored[action_id]
            self.reached[action_id].append(PRUNED)
        del self.finished[:-PRUNE_KEEP]

    # the record

    def forget(self, action_id: str) -> bool:
        """Drop an action as a wiped agent DB would; False when it is not stored."""
        if self.stored.pop(action_id, None) is None:
            return False
        if action_id in self.finished:
            self.finished.remove(action_id)
        self.reached[action_id].append(FORGOTTEN)
        return True

    def records(self) -> list[dict[str, Any]]:
        return [{"id": a.id, "kind": a.kind, "args": copy.deepcopy(a.args), "state": a.state,
                 "headers": dict(a.headers)} for a in self.stored.values()]


