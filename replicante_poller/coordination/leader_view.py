"""The elected leader's view of the action journal in ZooKeeper: what its dispatcher
reads and writes (`journal.ZkJournal` hands it the leader's calls).

The leader keeps every live action in memory, and when each final one finished (read when
elected; new submissions read when the children watch fires), so choosing due actions
reads nothing from ZooKeeper. Its writes
are fenced by its election znode and conditional on the version of the state it read
(`action_znodes.py`); one that loses (a cancel got there first) writes nothing and the
action is read again. Final actions are deleted RETENTION after they finished, and the
oldest beyond MAX_FINAL, so the journal stays within what ZooKeeper holds well.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Optional

from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from ..actions.journal import Action, ActionState
from ..errors import JournalConflict, StoreError
from .action_znodes import ActionZnodes, attempt_record, state_record

log = logging.getLogger(__name__)
RETENTION = 14 * 86400.0  # final actions are kept this long after they finished
MAX_FINAL = 10_000  # and at most this many (the oldest go first)
PRUNE_EVERY = 600.0  # seconds between the leader's pruning passes
PRUNE_BATCH = 500  # actions deleted per pass at most
LIVE = (ActionState.PENDING, ActionState.SCHEDULED, ActionState.RUNNING)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """An action as the leader last wrote or read it, and its state znode's version."""

    action: Action
    version: int


class LeaderView:
    """The live actions in memory while this instance leads, and the leader's fenced writes."""

    def __init__(self, znodes: ActionZnodes, clock: Callable[[], float], on_submit: Callable[[], None]):
        """`on_submit` is called (on kazoo's thread: keep it short) when new submissions appear."""
        self._znodes, self._clock, self._on_submit = znodes, clock, on_submit
        self._lock = threading.Lock()
        self._fence: Optional[str] = None  # the leader's election znode
        self._cache: Optional[dict[str, _Entry]] = None  # the live actions, on the leader
        self._finished: dict[str, float] = {}  # and when each final one finished (for pruning)
        self._listing = threading.Event()  # the children changed since the leader last listed them
        self._pruned_at = float("-inf")

    def lead(self, fence: str) -> int:
        """Become the journal's writer, fenced by `fence` (the election znode): read every
        action. Returns how many are live. StoreError when they cannot be read."""
        self._znodes.ensure()
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

    def pending(self) -> int:
        """Actions not delivered yet (0 while not leading)."""
        with self._lock:
            cache = self._cache
            return sum(1 for e in cache.values() if e.action.state is ActionState.PENDING) if cache else 0

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
                ids = set(self._znodes.children(watch=self._children_changed))
            except NoNodeError:  # deleted under the service: made again, empty
                self._znodes.ensure(again=True)
                ids = set()
            with self._lock:
                known = set(self._cache or ()) | set(self._finished)
            found = self._znodes.read_many(ids - known)
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
                raise self._znodes.error("this instance is no longer the dispatcher leader")
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
        found = self._znodes.read(action_id)
        if found is None:
            raise self._znodes.error(f"no action {action_id}")
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

    def _commit(self, ops: Callable[[Any], None], doing: str) -> list[Any]:
        """A multi-op fenced by the election znode: StoreError at once when this instance no
        longer leads or is disconnected (a suspended leader is being deposed: nothing waits)."""
        fence = self._fence
        self._znodes.connected(doing)
        if fence is None:
            raise self._znodes.error(f"{doing}: this instance is no longer the dispatcher leader")
        return self._znodes.commit(ops, doing, fence)

    def _write(self, entry: _Entry, new: Action, doing: str, extra: Callable[[Any], None] = lambda t: None) -> bool:
        """Write `new` as the action's state if it still is at `entry`'s version (fenced);
        False when another writer changed it first (a cancel): nothing written, the action
        read again."""
        record = state_record(new)

        def ops(t: Any) -> None:
            t.set_data(self._znodes.path(new.id, "state"), record, version=entry.version)
            extra(t)
        try:
            results = self._commit(ops, doing)
        except JournalConflict:
            found = self._znodes.read(new.id)  # as it is now: the next step starts from there
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
        attempt = attempt_record(now, "sending", "")
        if not self._write(entry, new, f"recording attempt {n} of action {action.id}",
                           lambda t: t.create(self._znodes.attempt_path(action.id, n), attempt)):
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
        path = self._znodes.attempt_path(action_id, n)
        began = old.updated_ts if old.attempts == n else now  # begin_attempt's write is the last one before this
        result = attempt_record(began, outcome, detail)
        doing = f"recording the outcome of attempt {n} of action {action_id}"
        if old.state is ActionState.PENDING and self._write(entry, new, doing, lambda t: t.set_data(path, result)):
            return True
        self._commit(lambda t: t.set_data(path, result), doing)  # the outcome alone
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
            log.info("%s: deleted %d final actions (kept %gd, at most %d)", self._znodes.where,
                     min(len(doomed), PRUNE_BATCH), RETENTION / 86400, MAX_FINAL)

    def _delete(self, action_id: str) -> None:
        """Delete a final action's znodes in one multi-op (those it has: an `attempts` znode
        may be missing from a damaged one); then it is forgotten."""
        path = self._znodes.path
        try:
            names: Optional[list[str]] = self._znodes.attempt_names(action_id)
        except NoNodeError:
            names = None  # no attempts znode: damaged, or the whole action gone already

        def ops(t: Any) -> None:
            for name in names or ():
                t.delete(path(action_id, "attempts", name))
            for znode in ((path(action_id, "attempts"),) if names is not None else ()) + (
                    path(action_id, "state"), path(action_id)):
                t.delete(znode)
        try:
            self._commit(ops, f"deleting final action {action_id}")
        except StoreError as exc:  # changed meanwhile, gone already, or ZooKeeper failed: left for a later leader
            if names is not None:
                log.warning("%s", exc)
        with self._lock:
            self._finished.pop(action_id, None)
