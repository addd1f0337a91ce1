"""The action journal's znodes: their paths and records, requests with kazoo's errors
translated, pipelined reads, and the multi-op every write is (`journal.ZkJournal` and the
leader's `leader_view.LeaderView` write and read through this class only).

Layout under `{path}/journal/actions/ID`: the submission (agent, kind, args, requester,
created_ts; never changed), its `state` child (state, attempts, times, message: what the
dispatcher learns, each write conditional on the version it read) and `attempts/N`
children (created before attempt N leaves, its outcome set after the answer). A
submission is one multi-op (every znode or none), acknowledged only once it committed.

Fencing: the leader's writes are multi-ops that also check its election znode, so an
instance whose session expired (another may lead by then) writes nothing more. A state
write that meets another version (another writer got there first) changes nothing and
raises `JournalConflict`; the action is read again.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Iterable, Optional

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NoNodeError, RolledBackError

from ..actions.journal import Action, ActionState, Attempt
from ..config import CoordinationSettings
from ..errors import JournalConflict, StoreError
from .zookeeper import plain

log = logging.getLogger(__name__)
OP_TIMEOUT = 10.0  # seconds a ZooKeeper request may take before the operation fails
FENCE_VERSION = 0  # an election znode is never written after its creation
SUBMISSION = ("agent", "kind", "args", "requester", "created_ts")
STATE = ("state", "attempts", "next_ts", "message", "cluster_id", "node_id", "delivered_ts", "finished_ts",
         "updated_ts", "agent_history")


def submission_record(action: Action) -> bytes:
    """The data of the action's znode (what never changes)."""
    return _encode(_pick(action, SUBMISSION))


def state_record(action: Action) -> bytes:
    """The data of the action's `state` znode."""
    return _encode(_pick(action, STATE))


def attempt_record(ts: float, outcome: str, detail: str) -> bytes:
    """The data of an `attempts/N` znode."""
    return _encode({"ts": ts, "outcome": outcome, "detail": detail})


def _pick(action: Action, keys: tuple[str, ...]) -> dict[str, Any]:
    document = action.to_json()
    return {k: document[k] for k in keys}


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def _attempt_name(n: int) -> str:
    return f"{n:06d}"


class ActionZnodes:
    """The znodes of the actions under `{path}/journal/actions`, read and written with
    OP_TIMEOUT; failures are StoreError (NoNodeError passes where a read may miss)."""

    what = "action journal"

    def __init__(self, client: KazooClient, settings: CoordinationSettings):
        self.client = client
        self.base = settings.path.rstrip("/") + "/journal/actions"
        self.where = f"ZooKeeper {settings.hosts}{self.base}"
        self._ready = False  # the base znode exists
        self._damaged: set[str] = set()  # records named in the log once

    def __str__(self) -> str:
        return self.where

    def error(self, message: str) -> StoreError:
        """A StoreError naming the journal."""
        return StoreError(self.where, self.what, message)

    def call(self, result: Any, doing: str) -> Any:
        """The result of an async request; NoNodeError passes, other failures are StoreError."""
        try:
            return result.get(timeout=OP_TIMEOUT)
        except NoNodeError:
            raise
        except self.client.handler.timeout_exception:
            raise self.error(f"{doing}: ZooKeeper did not answer within {OP_TIMEOUT:g}s") from None
        except KazooException as exc:
            raise self.error(f"{doing}: {plain(exc)}") from None

    def connected(self, doing: str) -> None:
        """StoreError at once while the session is down (rather than a request waiting OP_TIMEOUT)."""
        if not self.client.connected:
            raise self.error(f"{doing}: not connected to ZooKeeper")

    def ensure(self, again: bool = False) -> None:
        """Create the base znode unless done already (`again`: it was deleted meanwhile)."""
        if again:
            self._ready = False
        self.connected("opening the journal")
        if not self._ready:
            self.call(self.client.ensure_path_async(self.base), "creating the journal's znode")
            self._ready = True

    def path(self, action_id: str, *rest: str) -> str:
        return "/".join((self.base, action_id, *rest))

    def attempt_path(self, action_id: str, n: int) -> str:
        return self.path(action_id, "attempts", _attempt_name(n))

    def children(self, watch: Optional[Callable[[Any], None]] = None) -> list[str]:
        """The ids of every action (NoNodeError when the base znode is missing)."""
        return self.call(self.client.get_children_async(self.base, watch=watch), "listing actions")

    def watch_state(self, action_id: str, watch: Callable[[Any], None]) -> None:
        """Have `watch` called once the action's state changes (or appears): the request is
        sent, its answer not waited for."""
        self.client.exists_async(self.path(action_id, "state"), watch=watch)

    def exists(self, action_id: str) -> bool:
        return self.call(self.client.exists_async(self.path(action_id)), "checking a submission") is not None

    def read(self, action_id: str) -> Optional[tuple[Action, int]]:
        """An action and its state's version from ZooKeeper; None when it does not exist."""
        return self.read_many([action_id]).get(action_id)

    def read_many(self, ids: Iterable[str]) -> dict[str, tuple[Action, int]]:
        """Pipelined reads of several actions; missing ones are left out, damaged ones logged and left out."""
        pending = [(i, self.client.get_async(self.path(i)), self.client.get_async(self.path(i, "state"))) for i in ids]
        found: dict[str, tuple[Action, int]] = {}
        for action_id, submission, state in pending:
            try:
                (sub_data, _), (state_data, stat) = (self.call(submission, f"reading action {action_id}"),
                                                     self.call(state, f"reading action {action_id}"))
            except NoNodeError:
                continue
            action = _decode(action_id, sub_data, state_data)
            if action is None:
                if action_id not in self._damaged:
                    self._damaged.add(action_id)
                    log.error("%s: the record of action %s cannot be read (damaged?), left as it is",
                              self.where, action_id)
                continue
            found[action_id] = (action, stat.version)
        return found

    def creation_times(self, ids: Iterable[str]) -> dict[str, float]:
        """When each action was submitted (pipelined reads of the submissions only);
        missing ones are left out, damaged ones are 0."""
        pending = [(i, self.client.get_async(self.path(i))) for i in ids]
        times: dict[str, float] = {}
        for action_id, result in pending:
            try:
                data, _ = self.call(result, f"reading action {action_id}")
                times[action_id] = float(json.loads(data)["created_ts"])
            except NoNodeError:
                continue
            except (ValueError, KeyError, TypeError):
                times[action_id] = 0.0  # damaged: listed last, and named when read whole
        return times

    def attempt_names(self, action_id: str) -> list[str]:
        """The names of the action's `attempts` children (NoNodeError when it has none)."""
        return self.call(self.client.get_children_async(self.path(action_id, "attempts")), "listing attempts")

    def attempts(self, action_id: str) -> list[Attempt]:
        """The action's attempts, first first; damaged ones logged and left out."""
        try:
            names = self.attempt_names(action_id)
        except NoNodeError:
            return []
        pending = [(name, self.client.get_async(self.path(action_id, "attempts", name))) for name in sorted(names)]
        attempts = []
        for name, result in pending:
            try:
                data, _ = self.call(result, f"reading attempt {name} of action {action_id}")
                document = json.loads(data)
                attempts.append(Attempt(n=int(name), ts=float(document["ts"]), outcome=str(document["outcome"]),
                                        detail=str(document["detail"])))
            except NoNodeError:
                continue
            except (ValueError, KeyError, TypeError):
                log.error("%s: attempt %s of action %s cannot be read (damaged?)", self.where, name, action_id)
        return attempts

    def commit(self, ops: Callable[[Any], None], doing: str, fence: Optional[str] = None) -> list[Any]:
        """One multi-op (with a check that the leader's election znode `fence` still is, when
        given); the results of `ops`. JournalConflict when a versioned write lost, StoreError
        when the fence is gone or ZooKeeper failed."""
        transaction = self.client.transaction()
        if fence is not None:
            transaction.check(fence, FENCE_VERSION)
        ops(transaction)
        results = self.call(transaction.commit_async(), doing)
        failed = [(n, r) for n, r in enumerate(results) if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
        if not failed:
            return results[1:] if fence is not None else results
        index, error = failed[0]
        if fence is not None and index == 0:
            raise self.error(f"{doing}: this instance is no longer the dispatcher leader (its election znode is gone)")
        if isinstance(error, BadVersionError):
            raise JournalConflict(self.where, self.what, f"{doing}: changed meanwhile by another writer")
        raise self.error(f"{doing}: {plain(error)}")


def _decode(action_id: str, submission: bytes, state: bytes) -> Optional[Action]:
    """The action of its two records, or None when they cannot be read."""
    try:
        fields = {**_fields(submission, SUBMISSION), **_fields(state, STATE)}
        fields["state"] = ActionState(fields["state"])
        for key in ("created_ts", "next_ts", "updated_ts"):
            fields[key] = float(fields[key])
        if not isinstance(fields["attempts"], int) or not all(isinstance(fields[k], str) for k in ("agent", "kind", "message")):
            return None
        return Action(id=action_id, **fields)
    except (ValueError, TypeError, KeyError):
        return None


def _fields(data: bytes, keys: tuple[str, ...]) -> dict[str, Any]:
    document = json.loads(data)
    if not isinstance(document, dict) or set(document) != set(keys):
        raise ValueError("unexpected keys")
    return document
