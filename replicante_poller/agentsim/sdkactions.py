"""The replisdk actions API (`/api/unstable/action`, `/action/{id}`, `/actions/queue`,
`/actions/finished`) of simulated agents: one book per node, as `../shared/agent-api-replisdk.md`
sections 1, 2 and 5 and the replisdk sources describe it.

- POST decodes an ActionExecutionRequest (actix-web's `web::Json`: 2 MiB, plain-text 400/413),
  refuses an unknown kind or a created_time not in UTC (400 JSON), an id in use (409 JSON),
  generates a v4 id when none is sent, and answers 200 `{"id": ...}`.
- The node's executor runs ONE unfinished action per tick (`step_seconds`): RUNNING first,
  then NEW, oldest scheduled first; it invokes the kind's handler as the SDK does: a handler
  error ends the action FAILED with `state.error`; a NEW action the handler leaves NEW is
  RUNNING. So `test.success` goes NEW -> DONE and `test.fail` NEW -> FAILED in one tick, and
  `test.loop` counts up to `args.target` (default 10), RUNNING in between.
- `cluster.init` and `cluster.add` behave as repliagent-mongodb's: init only succeeds on a
  node in no cluster (node_status NOT_IN_CLUSTER), add needs `{"host": ...}` (or `node`) and,
  on MongoDB, the primary.
- The lists show at most 50 actions, oldest scheduled first; finished actions are deleted
  `clean_age` seconds after they finish (the store cleaner).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

from ..agentapi import ACTION, ACTION_PREFIX, ACTIONS_FINISHED, ACTIONS_QUEUE
from .api import EMPTY_404, dumps, plain_text, sdk_error
from .engine import DONE, FAILED, FORGOTTEN, NEW, PRUNED, RUNNING, ActionEngine, Verifier
from .sdkrequest import MAX_JSON_BODY, ExecutionRequest, ExtractError, Timestamp, parse_request, parse_uuid
from .wire import Request, Route, compressible

LIST_LIMIT = 50  # rows of /actions/queue and /actions/finished (SQL LIMIT 50)
_KIND_PREFIX = "agent.replicante.io/"
CLUSTER_INIT, CLUSTER_ADD = _KIND_PREFIX + "cluster.init", _KIND_PREFIX + "cluster.add"
TEST_SUCCESS, TEST_FAIL, TEST_LOOP = (_KIND_PREFIX + "test.success", _KIND_PREFIX + "test.fail",
                                      _KIND_PREFIX + "test.loop")
_UNAUTHORIZED = sdk_error(401, "unauthorized")
_LENGTH_REQUIRED = plain_text(411, "a request body needs a Content-Length")
_EXPECTATION_FAILED = plain_text(417, "Expect is not supported: send the body directly")
_NOT_UTC = sdk_error(400, "The provided created_time MUST be in UTC")
_ID_IN_USE = sdk_error(409, "The action ID is already used by another action")
_NOT_PRIMARY = ("Kind: Command failed: Error code 10107 (NotWritablePrimary): New config is rejected :: caused by "
                ":: replSetReconfig should only be run on a writable PRIMARY. Current state SECONDARY;, labels: {}")
_STORE_DOWN = "Kind: I/O error: Connection refused (os error 111), labels: {}"


class HandlerError(Exception):
    """An action handler's error: the action ends FAILED with it as `state.error`."""

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.message, self.cause = message, cause

    def document(self) -> dict[str, object]:
        """replisdk's `into_json`: error_cause only when it differs from error_msg."""
        if self.cause is None or self.cause == self.message:
            return {"error_msg": self.message}
        return {"error_cause": self.cause, "error_msg": self.message}


@dataclasses.dataclass
class SdkAction:
    """One stored ActionExecution of one node."""

    id: str
    kind: str
    args: Any
    created: Timestamp
    metadata: dict[str, str]
    scheduled_ns: int
    rowid: int
    headers: dict[str, str]  # of the schedule request: recorded for tests, not served
    phase: str = NEW
    error: Any = None
    payload: Any = None
    finished_ns: int | None = None
    finished_at: float | None = None  # monotonic, for the cleaner

    def order(self) -> tuple[int, int]:
        return self.scheduled_ns, self.rowid

    def summary(self) -> dict[str, object]:
        return {"id": self.id, "kind": self.kind, "phase": self.phase}

    def execution(self) -> dict[str, object]:
        finished = None if self.finished_ns is None else Timestamp(self.finished_ns).rfc3339()
        return {"args": self.args, "created_time": self.created.rfc3339(), "finished_time": finished,
                "id": self.id, "kind": self.kind, "metadata": self.metadata,
                "scheduled_time": Timestamp(self.scheduled_ns).rfc3339(),
                "state": {"error": self.error, "payload": self.payload, "phase": self.phase}}


# handler(book, action) -> (phase, payload) where payload None keeps the current one
Handler = Callable[["SdkBook", SdkAction], "tuple[str, Any]"]


@dataclasses.dataclass
class SdkBook:
    """One replisdk node's actions, and the record tests read. Guarded by the engine's Condition."""

    datastore: str  # NodeSpec.kind: the handlers of cluster.* follow it
    node_status: str  # NodeSpec.node_status (UNAVAILABLE for a node whose store is down)
    primary: bool
    verifier: Verifier | None = None  # this node's own (enforcing mode); else the engine's
    stored: dict[str, SdkAction] = dataclasses.field(default_factory=dict)
    posts: int = 0
    executions: dict[str, int] = dataclasses.field(default_factory=dict)
    reached: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # FORGOTTEN, PRUNED included
    ticking: bool = False  # an executor tick is due
    _rowids: itertools.count = dataclasses.field(default_factory=itertools.count)

    # the API (connection threads)

    def route(self, engine: ActionEngine, request: Request, body: bytes) -> Route:
        path, method = request.path, request.method
        if path == ACTION and method == "POST":
            with engine.cond:
                self.posts += 1
        if not engine.enabled:
            return EMPTY_404
        if path == ACTION:
            return self._schedule(engine, request, body) if method == "POST" else EMPTY_404
        if method != "GET":  # actix-web's method guards: no route, an empty 404
            return EMPTY_404
        if path in (ACTIONS_QUEUE, ACTIONS_FINISHED):
            finished = path == ACTIONS_FINISHED
            with engine.cond:
                listed = sorted((a for a in self.stored.values() if (a.finished_ns is not None) == finished),
                                key=SdkAction.order)[:LIST_LIMIT]
                return compressible(200, dumps({"actions": [a.summary() for a in listed]}))
        if path.startswith(ACTION_PREFIX):
            return self._lookup(engine, path[len(ACTION_PREFIX):])
        return EMPTY_404

    def _lookup(self, engine: ActionEngine, segment: str) -> Route:
        if not segment or "/" in segment:  # `{action_id}` matches one non-empty segment
            return EMPTY_404
        action_id = parse_uuid(urllib.parse.unquote(segment))
        if action_id is None:
            return plain_text(404, "Path deserialize error: UUID parsing failed: invalid UUID "
                                   f"{urllib.parse.unquote(segment)!r}")
        with engine.cond:
            action = self.stored.get(action_id)
            return EMPTY_404 if action is None else compressible(200, dumps(action.execution()))

    def _schedule(self, engine: ActionEngine, request: Request, body: bytes) -> Route:
        """Size, verification (the simulator's hook for signatures), the body (actix-web's
        extractor), then the handler's checks: kind, created_time in UTC, a free id."""
        if "transfer-encoding" in request.headers:
            return _LENGTH_REQUIRED
        if request.content_length > MAX_JSON_BODY:
            return plain_text(413, f"JSON payload ({request.content_length} bytes) is larger than allowed "
                                   f"(limit: {MAX_JSON_BODY} bytes).")
        if request.body_length < 0:  # Expect: 100-continue, the body was not read
            return _EXPECTATION_FAILED
        if not engine.verified(self.verifier, request, body):
            return _UNAUTHORIZED
        try:
            wanted = parse_request(request.headers.get("content-type", ""), body)
        except ExtractError as exc:
            return plain_text(exc.status, str(exc))
        if wanted.kind not in HANDLERS:
            return sdk_error(400, f"metadata for action {wanted.kind} not found")
        if wanted.created_time is not None and wanted.created_time.offset != 0:
            return _NOT_UTC
        with engine.cond:
            action = self._store(engine, wanted, dict(request.headers))
        if action is None:
            return _ID_IN_USE
        return compressible(200, dumps({"id": action.id}))

    def _store(self, engine: ActionEngine, wanted: ExecutionRequest, headers: dict[str, str]) -> SdkAction | None:
        action_id = wanted.id or str(uuid.uuid4())
        if action_id in self.stored:
            return None
        now = time.time_ns()
        action = SdkAction(action_id, wanted.kind, wanted.args, wanted.created_time or Timestamp(now),
                           wanted.metadata, now, next(self._rowids), headers)
        self.stored[action_id] = action
        self.reached.setdefault(action_id, []).append(NEW)
        if not self.ticking:
            self.ticking = True
            engine.later(engine.step, lambda: self._tick(engine))
        return action

    # execution and cleaning (the executor thread)

    def _tick(self, engine: ActionEngine) -> None:
        """One loop of the node's executor: the next unfinished action, RUNNING before NEW."""
        self.ticking = False
        pending = [a for a in self.stored.values() if a.finished_ns is None]
        if not pending:
            return
        action = min(pending, key=lambda a: (a.phase != RUNNING, a.order()))
        if action.phase == NEW:
            self.executions[action.id] = self.executions.get(action.id, 0) + 1
        try:
            phase, payload = HANDLERS[action.kind](self, action)
        except HandlerError as exc:
            action.error = exc.document()
            self._enter(engine, action, FAILED)
        else:
            if payload is not None:
                action.payload = payload
            self._enter(engine, action, RUNNING if phase == NEW else phase)
        if len(pending) > 1 or action.finished_ns is None:
            self.ticking = True
            engine.later(engine.step, lambda: self._tick(engine))

    def _enter(self, engine: ActionEngine, action: SdkAction, phase: str) -> None:
        if phase == action.phase:
            return
        action.phase = phase
        self.reached[action.id].append(phase)
        if phase in (DONE, FAILED):
            action.finished_ns, action.finished_at = time.time_ns(), time.monotonic()
            engine.later(engine.clean_age, lambda: self._clean(engine))

    def _clean(self, engine: ActionEngine) -> None:
        """The store cleaner: delete actions finished `clean_age` or more seconds ago."""
        cutoff = time.monotonic() - engine.clean_age
        for action in [a for a in self.stored.values() if a.finished_at is not None and a.finished_at <= cutoff]:
            del self.stored[action.id]
            self.reached[action.id].append(PRUNED)

    def housekeep(self, engine: ActionEngine) -> None:
        """replisdk agents have no periodic pruning besides the cleaner."""

    # the record

    def forget(self, action_id: str) -> bool:
        """Drop an action as a wiped agent DB would; False when it is not stored."""
        if self.stored.pop(action_id, None) is None:
            return False
        self.reached[action_id].append(FORGOTTEN)
        return True

    def records(self) -> list[dict[str, Any]]:
        return [{"id": a.id, "kind": a.kind, "args": copy.deepcopy(a.args), "state": a.phase,
                 "headers": dict(a.headers)} for a in sorted(self.stored.values(), key=SdkAction.order)]


# --- handlers of the kinds the agents register --------------------------------------------------

def _success(book: SdkBook, action: SdkAction) -> tuple[str, Any]:
    return DONE, None


def _fail(book: SdkBook, action: SdkAction) -> tuple[str, Any]:
    raise HandlerError("Test action failed as expected")


def _loop(book: SdkBook, action: SdkAction) -> tuple[str, Any]:
    """Count one more each invocation until `target` (payload's, else args', else 10)."""
    source = action.payload if isinstance(action.payload, dict) else action.args
    target = _u64(source.get("target")) if isinstance(source, dict) else None
    target = 10 if target is None else target
    count = (_u64(action.payload.get("count")) if isinstance(action.payload, dict) else None) or 0
    count += 1
    return (DONE if count >= target else RUNNING), {"count": count, "target": target}


def _u64(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
        return value
    return None


def _init(book: SdkBook, action: SdkAction) -> tuple[str, Any]:
    """repliagent-mongodb: replSetInitiate, refused when the node already is in a replica set."""
    args = action.args
    if not (args is None or (isinstance(args, dict) and isinstance(args.get("settings", {}), (dict, type(None))))):
        raise HandlerError("arguments provided to the init action are not valid",
                           "invalid type, expected struct InitArgs")
    if book.node_status == "UNAVAILABLE":
        raise HandlerError(_STORE_DOWN)
    if book.node_status != "NOT_IN_CLUSTER":
        raise HandlerError("the replica set is already initialised" if book.datastore == "MongoDB"
                           else "the cluster is already initialised")
    return DONE, None


def _add(book: SdkBook, action: SdkAction) -> tuple[str, Any]:
    """repliagent-mongodb: replSetReconfig with the new member, which only a primary accepts."""
    args = action.args
    if not isinstance(args, dict) or not isinstance(args.get("host", args.get("node")), str):
        raise HandlerError("arguments provided to the add action are not valid", "missing field `host`")
    if book.node_status == "UNAVAILABLE":
        raise HandlerError("unable to add node to replica set", _STORE_DOWN)
    if book.datastore == "MongoDB" and not (book.primary and book.node_status == "HEALTHY"):
        raise HandlerError("unable to add node to replica set", _NOT_PRIMARY)
    return DONE, None


HANDLERS: dict[str, Handler] = {
    CLUSTER_INIT: _init, CLUSTER_ADD: _add,
    TEST_SUCCESS: _success, TEST_FAIL: _fail, TEST_LOOP: _loop,
}
