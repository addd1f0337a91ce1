"""The action journal in ZooKeeper (`[coordination] backend = zookeeper`): every instance
and the CLI submit and read actions there, and the elected leader's dispatcher delivers
them, so a new leader continues every pending action with the same ids (DESIGN section 9).

Layout under `{path}/journal/actions/ID`: the submission (agent, kind, args, requester,
created_ts; never changed), its `state` child (state, attempts, times, message: what the
dispatcher learns, each write conditional on the version it read) and `attempts/N`
children (created before attempt N leaves, its outcome set after the answer). A
submission is one multi-op (every znode or none), acknowledged only once it committed.

Fencing: the leader's writes are multi-ops that also check its election znode, so an
instance whose session expired (another may lead by then) writes nothing more. A state
write that meets another version (another writer got there first) changes nothing and
raises `JournalConflict`; the action is read again.

The leader keeps every action in memory (read when elected; new submissions read when the
children watch fires), so choosing due actions reads nothing from ZooKeeper; requests on
other instances read ZooKeeper. Final actions are deleted RETENTION after they finished,
and the oldest beyond MAX_FINAL, so the journal stays within what ZooKeeper holds well.
A listing of the newest actions reads only those whole (submission times are remembered).
Measured (benchmarks/bench_journal.py, 2,000 actions, one local server, a loaded 2-core
machine): 460 to 870 submissions/s, 150 to 225 deliveries/s (two fenced multi-ops each), the
200 newest listed in 0.1 s (0.4 s the first time), a new leader reads every action in 0.8
to 1.3 s.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Optional

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, KazooException, NoNodeError, RolledBackError
from kazoo.protocol.states import ZnodeStat

from ..actions.journal import Action, ActionState, Attempt, cancellation, check_prefix, matching
from ..config import CoordinationSettings
from ..errors import CancelRefused, ConfigError, JournalConflict, StoreError
from .zookeeper import new_client, plain

log = logging.getLogger(__name__)
OP_TIMEOUT = 10.0  # seconds a ZooKeeper request may take before the operation fails
RETENTION = 14 * 86400.0  # final actions are kept this long after they finished
MAX_FINAL = 10_000  # and at most this many (the oldest go first)
PRUNE_EVERY = 600.0  # seconds between the leader's pruning passes
PRUNE_BATCH = 500  # actions deleted per pass at most
LIST_REUSE = 1.0  # seconds a listing serves again (status pages refresh; each listing reads ZooKeeper)
CANCEL_TRIES = 3  # reads of an action a cancel makes while the dispatcher keeps writing it
FENCE_VERSION = 0  # an election znode is never written after its creation
SUBMISSION = ("agent", "kind", "args", "requester", "created_ts")
STATE = ("state", "attempts", "next_ts", "message", "cluster_id", "node_id", "delivered_ts", "finished_ts",
         "updated_ts", "agent_history")
LIVE = (ActionState.PENDING, ActionState.SCHEDULED, ActionState.RUNNING)
def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def _attempt_name(n: int) -> str:
    return f"{n:06d}"


@dataclasses.dataclass(frozen=True)
class _Entry:
    """An action as the leader last wrote or read it, and its state znode's version."""

    action: Action
    version: int


class ZkJournal:
    """The journal's ZooKeeper store, with the SQLite `Journal`'s interface."""

    what = "action journal"

    def __init__(self, client: KazooClient, settings: CoordinationSettings, clock: Callable[[], float] = time.time,
                 on_submit: Callable[[], None] = lambda: None, own_client: bool = False):
        """`on_submit` is called (on kazoo's thread: keep it short) when the leader sees new
        submissions; `own_client`: `close()` stops the client too (the CLI's)."""
        self._client, self._clock, self._on_submit, self._own_client = client, clock, on_submit, own_client
        self._base = settings.path.rstrip("/") + "/journal/actions"
        self._where = f"ZooKeeper {settings.hosts}{self._base}"
        self._lock = threading.Lock()
        self._fence: Optional[str] = None  # the leader's election znode
        self._cache: Optional[dict[str, _Entry]] = None  # the live actions, on the leader
        self._finished: dict[str, float] = {}  # and when each final one finished (for pruning)
        self._listing = threading.Event()  # the children changed since the leader last listed them
        self._pruned_at = float("-inf")
        self._ready = False  # the base znode exists
        self._created: dict[str, float] = {}  # submission times, for listings (`_creation_times`)
        self._damaged: set[str] = set()  # records named in the log once
        self._listed: Optional[tuple[float, int, list[Action]]] = None  # the last listing (when, limit, actions)

    def __str__(self) -> str:
        return self._where

    # -- ZooKeeper requests ------------------------------------------------------------

    def _call(self, result: Any, doing: str) -> Any:
        """The result of an async request; NoNodeError passes, other failures are StoreError."""
        try:
            return result.get(timeout=OP_TIMEOUT)
        except NoNodeError:
            raise
        except self._client.handler.timeout_exception:
            raise StoreError(self._where, self.what, f"{doing}: ZooKeeper did not answer within {OP_TIMEOUT:g}s") from None
        except KazooException as exc:
            raise StoreError(self._where, self.what, f"{doing}: {plain(exc)}") from None

    def _connected(self, doing: str) -> None:
        """StoreError at once while the session is down (rather than a request waiting OP_TIMEOUT)."""
        if not self._client.connected:
            raise StoreError(self._where, self.what, f"{doing}: not connected to ZooKeeper")

    def _ensure(self) -> None:
        self._connected("opening the journal")
        if not self._ready:
            self._call(self._client.ensure_path_async(self._base), "creating the journal's znode")
            self._ready = True

    def _path(self, action_id: str, *rest: str) -> str:
        return "/".join((self._base, action_id, *rest))

    def _read(self, action_id: str) -> Optional[tuple[Action, int]]:
        """An action and its state's version from ZooKeeper; None when it does not exist."""
        return self._read_many([action_id]).get(action_id)

    def _read_many(self, ids: Iterable[str]) -> dict[str, tuple[Action, int]]:
        """Pipelined reads of several actions; missing ones are left out, damaged ones logged and left out."""
        pending = [(i, self._client.get_async(self._path(i)), self._client.get_async(self._path(i, "state"))) for i in ids]
        found: dict[str, tuple[Action, int]] = {}
        for action_id, submission, state in pending:
            try:
                (sub_data, _), (state_data, stat) = (self._call(submission, f"reading action {action_id}"),
                                                     self._call(state, f"reading action {action_id}"))
            except NoNodeError:
                continue
            action = _decode(action_id, sub_data, state_data)
            if action is None:
                if action_id not in self._damaged:
                    self._damaged.add(action_id)
                    log.error("%s: the record of action %s cannot be read (damaged?), left as it is",
                              self._where, action_id)
                continue
            found[action_id] = (action, stat.version)
        return found

    def _commit(self, ops: Callable[[Any], None], doing: str, fenced: bool) -> list[Any]:
        """One multi-op (with the leader's fence check when `fenced`); JournalConflict when a
        versioned write lost, StoreError when the fence is gone or ZooKeeper failed."""
        transaction = self._client.transaction()
        fence = self._fence
        if fenced:
            self._connected(doing)  # a suspended leader is being deposed: nothing waits OP_TIMEOUT
            if fence is None:
                raise StoreError(self._where, self.what, f"{doing}: this instance is no longer the dispatcher leader")
            transaction.check(fence, FENCE_VERSION)
        ops(transaction)
        results = self._call(transaction.commit_async(), doing)
        failed = [(n, r) for n, r in enumerate(results) if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
        if not failed:
            return results[1:] if fenced else results
        index, error = failed[0]
        if fenced and index == 0:
            raise StoreError(self._where, self.what, f"{doing}: this instance is no longer the dispatcher leader "
                                                     "(its election znode is gone)")
        if isinstance(error, BadVersionError):
            raise JournalConflict(self._where, self.what, f"{doing}: changed meanwhile by another writer")
        raise StoreError(self._where, self.what, f"{doing}: {plain(error)}")

    # -- any instance ----------------------------------------------------------------

    def submit(self, agent: str, kind: str, args: Any, requester: str = "CORE_API") -> Action:
        """Durably queue a new action (one multi-op); its id is the action_id the agent will see."""
        self._ensure()
        now = self._clock()
        action = Action(id=str(uuid.uuid4()), agent=agent, kind=kind, args=args, requester=requester, created_ts=now,
                        state=ActionState.PENDING, attempts=0, next_ts=now, message="queued", cluster_id=None,
                        node_id=None, delivered_ts=None, finished_ts=None, updated_ts=now, agent_history=None)
        document = action.to_json()

        def ops(t: Any) -> None:
            t.create(self._path(action.id), _encode({k: document[k] for k in SUBMISSION}))
            t.create(self._path(action.id, "state"), _encode({k: document[k] for k in STATE}))
            t.create(self._path(action.id, "attempts"), b"")
        try:
            self._commit(ops, f"storing action {action.id}", fenced=False)
        except JournalConflict:
            raise
        except StoreError as exc:  # no answer: it may have committed all the same
            if not self._stored(action.id):
                raise
            log.warning("%s: action %s was stored although the answer was lost (%s)", self._where, action.id, exc)
        self._listed = None
        return action

    def _stored(self, action_id: str) -> bool:
        """After a submission without an answer: whether it committed (requests of a session
        are answered in order, so a later read tells). StoreError saying so when unknown."""
        try:
            return self._call(self._client.exists_async(self._path(action_id)), "checking a submission") is not None
        except StoreError:
            raise StoreError(self._where, self.what, f"action {action_id} may have been stored, ZooKeeper did not "
                                                     f"say: check `action show {action_id}` before submitting it "
                                                     "again") from None

    def get(self, action_id: str) -> Optional[Action]:
        if not _is_id(action_id):
            return None
        self._connected(f"reading action {action_id}")
        found = self._read(action_id)
        return found[0] if found else None

    def resolve(self, prefix: str) -> str:
        """The id of the one action whose id starts with `prefix`; ActionNotFound otherwise."""
        prefix = check_prefix(prefix)
        self._connected("listing actions")
        try:
            ids = self._call(self._client.get_children_async(self._base), "listing actions")
        except NoNodeError:
            ids = []
        return matching(ids, prefix, self._where)

    def cancel(self, action_id: str) -> Action:
        """Cancel a PENDING action with no attempt in flight (any instance: a versioned write
        the leader's next write of it then loses). CancelRefused / ActionNotFound otherwise."""
        for _ in range(CANCEL_TRIES):
            found = self._read(action_id) if _is_id(action_id) else None
            action = found[0] if found else None
            sending = action is not None and action.attempts > 0 and any(
                a.n == action.attempts and a.outcome == "sending" for a in self.attempts(action_id))
            message = cancellation(action, action_id, self._where, sending)
            assert found is not None and action is not None
            now = self._clock()
            cancelled = dataclasses.replace(action, state=ActionState.CANCELLED, message=message, updated_ts=now,
                                            finished_ts=now)
            document = cancelled.to_json()
            try:
                self._commit(lambda t: t.set_data(self._path(action_id, "state"),
                                                  _encode({k: document[k] for k in STATE}), version=found[1]),
                             f"cancelling action {action_id}", fenced=False)
            except JournalConflict:
                continue  # the dispatcher wrote it meanwhile: look again
            self._listed = None
            return cancelled
        raise CancelRefused(f"action {action_id} keeps changing (being delivered?): try again (action show)")

    def list(self, limit: int = 200) -> list[Action]:
        """Newest first (a listing of this instance's is reused for LIST_REUSE seconds)."""
        listed, now = self._listed, time.monotonic()
        if listed is not None and now - listed[0] < LIST_REUSE and listed[1] >= limit:
            return listed[2][:limit]
        self._connected("listing actions")
        try:
            ids = self._call(self._client.get_children_async(self._base), "listing actions")
        except NoNodeError:
            return []
        created = self._creation_times(ids)
        newest = sorted(created, key=lambda i: (-created[i], i))[:limit]  # only these are read whole
        actions = [action for action, _ in self._read_many(newest).values()]
        actions.sort(key=lambda a: (-a.created_ts, a.id))
        self._listed = (now, limit, actions)
        return actions

    def _creation_times(self, ids: Iterable[str]) -> dict[str, float]:
        """When each action was submitted: submissions never change, so each is read once
        per process (pipelined) and remembered; actions deleted meanwhile are forgotten."""
        ids = set(ids)
        with self._lock:
            known = {i: t for i, t in self._created.items() if i in ids}
        unknown = [(i, self._client.get_async(self._path(i))) for i in ids - set(known)]
        for action_id, result in unknown:
            try:
                data, _ = self._call(result, f"reading action {action_id}")
                known[action_id] = float(json.loads(data)["created_ts"])
            except NoNodeError:
                continue
            except (ValueError, KeyError, TypeError):
                known[action_id] = 0.0  # damaged: listed last, and named when read whole
        with self._lock:
            self._created = known
        return known

    def attempts(self, action_id: str) -> list[Attempt]:
        try:
            names = self._call(self._client.get_children_async(self._path(action_id, "attempts")), "listing attempts")
        except NoNodeError:
            return []
        pending = [(name, self._client.get_async(self._path(action_id, "attempts", name))) for name in sorted(names)]
        attempts = []
        for name, result in pending:
            try:
                data, _ = self._call(result, f"reading attempt {name} of action {action_id}")
                document = json.loads(data)
                attempts.append(Attempt(n=int(name), ts=float(document["ts"]), outcome=str(document["outcome"]),
                                        detail=str(document["detail"])))
            except NoNodeError:
                continue
            except (ValueError, KeyError, TypeError):
                log.error("%s: attempt %s of action %s cannot be read (damaged?)", self._where, name, action_id)
        return attempts

    def wait_for(self, action_id: str, predicate: Callable[[Action], bool], timeout: float) -> Optional[Action]:
        """Block until the action satisfies `predicate` (a watch on its state), or timeout.

        Returns the action as last read (check the predicate again to tell a timeout)."""
        deadline = time.monotonic() + timeout
        changed = threading.Event()
        watch = lambda event: changed.set()  # noqa: E731 (one function: kazoo keeps one watch per function)
        while True:
            changed.clear()
            self._client.exists_async(self._path(action_id, "state"), watch=watch)
            action = self.get(action_id)
            remaining = deadline - time.monotonic()
            if (action is not None and predicate(action)) or remaining <= 0:
                return action
            changed.wait(remaining)

    def pending(self) -> int:
        """Actions not delivered yet, as the leader knows them (0 on other instances)."""
        with self._lock:
            cache = self._cache
            return sum(1 for e in cache.values() if e.action.state is ActionState.PENDING) if cache else 0

    def close(self) -> None:
        if self._own_client:
            self._client.stop()
            self._client.close()

    # -- the leader ----------------------------------------------------------------------

    def lead(self, fence: str) -> int:
        """Become the journal's writer, fenced by `fence` (the election znode): read every
        action. Returns how many are live. StoreError when they cannot be read."""
        self._ensure()
        with self._lock:
            self._fence, self._cache, self._finished = fence, {}, {}
        self._listing.set()
        self._refresh()
        with self._lock:
            return len(self._cache or {})

    def unlead(self) -> None:
        """No longer the leader: forget the actions, write nothing more."""
        with self._lock:
            self._fence, self._cache, self._finished = None, None, {}

    def _children_changed(self, event: object) -> None:
        self._listing.set()
        self._on_submit()

    def _refresh(self) -> None:
        """Read the submissions that appeared since the last listing (listed again next
        time when anything of it failed)."""
        if not self._listing.is_set():
            return
        self._listing.clear()
        try:
            try:
                ids = set(self._call(self._client.get_children_async(self._base, watch=self._children_changed),
                                     "listing actions"))
            except NoNodeError:  # deleted under the service: made again, empty
                self._ready = False
                self._ensure()
                ids = set()
            with self._lock:
                known = set(self._cache or ()) | set(self._finished)
            found = self._read_many(ids - known)
        except BaseException:
            self._listing.set()
            raise
        with self._lock:
            if self._cache is None:
                return
            for action_id in known - ids:
                self._cache.pop(action_id, None)
                self._finished.pop(action_id, None)
        for action_id, (action, version) in found.items():
            self._remember(action_id, action, version, replace=False)

    def _entries(self) -> list[_Entry]:
        """The live actions."""
        self._refresh()
        with self._lock:
            if self._cache is None:
                raise StoreError(self._where, self.what, "this instance is no longer the dispatcher leader")
            return list(self._cache.values())

    def due(self, now: float, limit: int = 100) -> list[Action]:
        """Live actions whose next step is due (from memory), soonest first."""
        self._prune()
        live = [e.action for e in self._entries() if e.action.next_ts <= now]
        live.sort(key=lambda a: a.next_ts)
        return live[:limit]

    def next_due(self) -> Optional[float]:
        times = [e.action.next_ts for e in self._entries()]
        return min(times) if times else None

    def _entry(self, action_id: str) -> _Entry:
        with self._lock:
            entry = (self._cache or {}).get(action_id)
        if entry is not None:
            return entry
        found = self._read(action_id)
        if found is None:
            raise StoreError(self._where, self.what, f"no action {action_id}")
        return self._remember(action_id, *found)

    def _remember(self, action_id: str, action: Action, version: int, replace: bool = True) -> _Entry:
        """Keep a live action whole, a final one's finishing time only (for pruning)."""
        entry = _Entry(action, version)
        with self._lock:
            if self._cache is None or (not replace and (action_id in self._cache or action_id in self._finished)):
                return entry
            if action.state in LIVE:
                self._cache[action_id] = entry
            else:
                self._cache.pop(action_id, None)
                self._finished[action_id] = action.finished_ts or action.updated_ts
        return entry

    def _forget(self, action_id: str) -> None:
        """After a write whose outcome is unknown (no answer): read it again before the next."""
        with self._lock:
            if self._cache is not None:
                self._cache.pop(action_id, None)

    def _write(self, entry: _Entry, new: Action, doing: str, extra: Callable[[Any], None] = lambda t: None) -> bool:
        """Write `new` as the action's state if it still is at `entry`'s version (fenced);
        False when another writer changed it first (a cancel): nothing written, the action
        read again."""
        document = new.to_json()

        def ops(t: Any) -> None:
            t.set_data(self._path(new.id, "state"), _encode({k: document[k] for k in STATE}), version=entry.version)
            extra(t)
        try:
            results = self._commit(ops, doing, fenced=True)
        except JournalConflict:
            found = self._read(new.id)  # as it is now: the next step starts from there
            if found is not None:
                self._remember(new.id, *found)
            return False
        except StoreError:
            self._forget(new.id)
            raise
        stat = results[0]
        self._remember(new.id, new, stat.version if isinstance(stat, ZnodeStat) else entry.version + 1)
        return True

    def begin_attempt(self, action: Action, cluster_id: str, node_id: str) -> Optional[int]:
        """Record that attempt n is about to be sent (before it is); returns n, or None when
        the action is no longer PENDING (cancelled meanwhile): then nothing may be sent."""
        entry = self._entry(action.id)
        if entry.action.state is not ActionState.PENDING:
            return None
        n = entry.action.attempts + 1
        now = self._clock()
        new = dataclasses.replace(entry.action, attempts=n, cluster_id=cluster_id, node_id=node_id, updated_ts=now,
                                  message=f"sending attempt {n}")
        attempt = _encode({"ts": now, "outcome": "sending", "detail": ""})
        if not self._write(entry, new, f"recording attempt {n} of action {action.id}",
                           lambda t: t.create(self._path(action.id, "attempts", _attempt_name(n)), attempt)):
            return None
        return n

    def end_attempt(self, action_id: str, n: int, outcome: str, detail: str, state: ActionState,
                    next_ts: float, message: str) -> bool:
        """Record the outcome of attempt n and, when it is still PENDING, the action's new
        state; False when it no longer was (the outcome is recorded, the state kept)."""
        entry = self._entry(action_id)
        now = self._clock()
        old = entry.action
        new = dataclasses.replace(old, state=state, next_ts=next_ts, message=message, updated_ts=now,
                                  delivered_ts=old.delivered_ts if old.delivered_ts is not None or
                                  state is not ActionState.SCHEDULED else now,
                                  finished_ts=old.finished_ts if old.finished_ts is not None or not state.final else now)
        path = self._path(action_id, "attempts", _attempt_name(n))
        began = old.updated_ts if old.attempts == n else now  # begin_attempt's write is the last one before this
        result = _encode({"ts": began, "outcome": outcome, "detail": detail})
        doing = f"recording the outcome of attempt {n} of action {action_id}"
        if old.state is ActionState.PENDING and self._write(entry, new, doing, lambda t: t.set_data(path, result)):
            return True
        self._commit(lambda t: t.set_data(path, result), doing, fenced=True)  # the outcome alone
        return False

    def update(self, action: Action, state: ActionState, next_ts: float, message: str,
               agent_history: Optional[list] = None) -> bool:
        """Record what tracking (or waiting) learned about `action`, only while it is still in
        the state it was read in; False when it was not (cancelled meanwhile): nothing changed."""
        action_id = action.id
        entry = self._entry(action_id)
        old = entry.action
        if old.state is not action.state:
            return False
        now = self._clock()
        new = dataclasses.replace(old, state=state, next_ts=next_ts, message=message, updated_ts=now,
                                  agent_history=agent_history if agent_history is not None else old.agent_history,
                                  finished_ts=old.finished_ts if old.finished_ts is not None or not state.final else now)
        return self._write(entry, new, f"updating action {action_id}")

    def _prune(self) -> None:
        """Delete final actions past RETENTION, and the oldest beyond MAX_FINAL: a batch per
        pass, every PRUNE_EVERY, or at once again while more are due."""
        now = self._clock()  # not due()'s argument: the dispatcher asks for everything with +inf
        if now - self._pruned_at < PRUNE_EVERY:
            return
        with self._lock:
            finals = sorted(self._finished.items(), key=lambda item: item[1])
        excess = max(0, len(finals) - MAX_FINAL)
        doomed = [i for n, (i, finished) in enumerate(finals) if n < excess or finished < now - RETENTION]
        for action_id in doomed[:PRUNE_BATCH]:
            self._delete(action_id)
        if len(doomed) <= PRUNE_BATCH:
            self._pruned_at = now
        if doomed:
            log.info("%s: deleted %d final actions (kept %gd, at most %d)", self._where, min(len(doomed), PRUNE_BATCH),
                     RETENTION / 86400, MAX_FINAL)

    def _delete(self, action_id: str) -> None:
        try:
            names = self._call(self._client.get_children_async(self._path(action_id, "attempts")), "listing attempts")
        except NoNodeError:
            names = None  # gone already (or damaged): forgotten below

        def ops(t: Any) -> None:
            for name in names or ():
                t.delete(self._path(action_id, "attempts", name))
            for path in (self._path(action_id, "attempts"), self._path(action_id, "state"), self._path(action_id)):
                t.delete(path)
        if names is not None:
            try:
                self._commit(ops, f"deleting final action {action_id}", fenced=True)
            except StoreError as exc:  # changed meanwhile, or ZooKeeper failed: left for a later leader
                log.warning("%s", exc)
        with self._lock:
            self._finished.pop(action_id, None)


def open_journal(settings: CoordinationSettings, source: str) -> ZkJournal:
    """The journal for a command (`action submit`, `list`, `show`): its own client, closed
    with the journal; ConfigError naming `[coordination] hosts` when ZooKeeper does not
    answer within `session_timeout`."""
    
    client = new_client(settings)
    timeout = settings.session_timeout
    try:
        client.start(timeout=timeout)
    except client.handler.timeout_exception:
        client.stop()
        client.close()
        raise ConfigError(source, "coordination", "hosts",
                          f"no ZooKeeper answered at {settings.hosts} within {timeout:g}s (the action journal is there)") from None
    return ZkJournal(client, settings, own_client=True)


def _is_id(text: str) -> bool:
    """A journal id (a UUID): anything else is no znode name of ours."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


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
