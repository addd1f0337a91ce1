"""The action journal in ZooKeeper (`[coordination] backend = zookeeper`): every instance
and the CLI submit and read actions there, and the elected leader's dispatcher delivers
them, so a new leader continues every pending action with the same ids (DESIGN section 9).

`ZkJournal` is the store every instance and the CLI use (submit, get, list, cancel, wait);
the znodes, their records and the fenced multi-op are `action_znodes.py`'s, and the
leader's in-memory view of the actions (what is due, the dispatcher's writes, pruning)
is `leader_view.py`'s, to which ZkJournal hands the leader's calls. What ZkJournal itself
answers (get, list, attempts) is read from ZooKeeper, on the leader too. A listing of the
newest actions reads only those whole (submission times are remembered).
Measured (benchmarks/bench_journal.py, 2,000 actions, one local server, a loaded 2-core
machine): 460 to 870 submissions/s, 150 to 225 deliveries/s (two fenced multi-ops each), the
200 newest listed in 0.1 s (0.4 s the first time), a new leader reads every action in 0.8
to 1.3 s.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Optional

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from ..actions.journal import Action, ActionState, Attempt, cancellation, check_prefix, matching
from ..config import CoordinationSettings
from ..errors import CancelRefused, ConfigError, JournalConflict, StoreError
from .action_znodes import ActionZnodes, state_record, submission_record
from .leader_view import RETENTION, LeaderView
from .zookeeper import new_client

__all__ = ["RETENTION", "ZkJournal", "open_journal"]
log = logging.getLogger(__name__)
LIST_REUSE = 1.0  # seconds a listing serves again (status pages refresh; each listing reads ZooKeeper)
CANCEL_TRIES = 3  # reads of an action a cancel makes while the dispatcher keeps writing it


class ZkJournal:
    """The journal's ZooKeeper store, with the SQLite `Journal`'s interface."""

    def __init__(self, client: KazooClient, settings: CoordinationSettings, clock: Callable[[], float] = time.time,
                 on_submit: Callable[[], None] = lambda: None, own_client: bool = False):
        """`on_submit` is called (on kazoo's thread: keep it short) when the leader sees new
        submissions; `own_client`: `close()` stops the client too (the CLI's)."""
        self._client, self._clock, self._own_client = client, clock, own_client
        self._znodes = ActionZnodes(client, settings)
        self._leader = LeaderView(self._znodes, clock, on_submit)
        self._lock = threading.Lock()
        self._created: dict[str, float] = {}  # submission times, for listings (`_creation_times`)
        self._listed: Optional[tuple[float, int, list[Action]]] = None  # the last listing (when, limit, actions)

    def __str__(self) -> str:
        return self._znodes.where

    # -- any instance ----------------------------------------------------------------

    def submit(self, agent: str, kind: str, args: Any, requester: str = "CORE_API") -> Action:
        """Durably queue a new action (one multi-op); its id is the action_id the agent will see."""
        self._znodes.ensure()
        now = self._clock()
        action = Action(id=str(uuid.uuid4()), agent=agent, kind=kind, args=args, requester=requester, created_ts=now,
                        state=ActionState.PENDING, attempts=0, next_ts=now, message="queued", cluster_id=None,
                        node_id=None, delivered_ts=None, finished_ts=None, updated_ts=now, agent_history=None)
        path = self._znodes.path

        def ops(t: Any) -> None:
            t.create(path(action.id), submission_record(action))
            t.create(path(action.id, "state"), state_record(action))
            t.create(path(action.id, "attempts"), b"")
        try:
            self._znodes.commit(ops, f"storing action {action.id}")
        except JournalConflict:
            raise
        except StoreError as exc:  # no answer: it may have committed all the same
            if not self._stored(action.id):
                raise
            log.warning("%s: action %s was stored although the answer was lost (%s)", self._znodes.where, action.id, exc)
        self._listed = None
        return action

    def _stored(self, action_id: str) -> bool:
        """After a submission without an answer: whether it committed (requests of a session
        are answered in order, so a later read tells). StoreError saying so when unknown."""
        try:
            return self._znodes.exists(action_id)
        except StoreError:
            raise self._znodes.error(f"action {action_id} may have been stored, ZooKeeper did not say: check "
                                     f"`action show {action_id}` before submitting it again") from None

    def get(self, action_id: str) -> Optional[Action]:
        if not _is_id(action_id):
            return None
        self._znodes.connected(f"reading action {action_id}")
        found = self._znodes.read(action_id)
        return found[0] if found else None

    def resolve(self, prefix: str) -> str:
        """The id of the one action whose id starts with `prefix`; ActionNotFound otherwise."""
        prefix = check_prefix(prefix)
        self._znodes.connected("listing actions")
        try:
            ids = self._znodes.children()
        except NoNodeError:
            ids = []
        return matching(ids, prefix, self._znodes.where)

    def cancel(self, action_id: str) -> Action:
        """Cancel a PENDING action with no attempt in flight (any instance: a versioned write
        the leader's next write of it then loses). CancelRefused / ActionNotFound otherwise."""
        path = self._znodes.path
        for _ in range(CANCEL_TRIES):
            found = self._znodes.read(action_id) if _is_id(action_id) else None
            action = found[0] if found else None
            sending = action is not None and action.attempts > 0 and any(
                a.n == action.attempts and a.outcome == "sending" for a in self.attempts(action_id))
            message = cancellation(action, action_id, self._znodes.where, sending)
            assert found is not None and action is not None
            now = self._clock()
            cancelled = dataclasses.replace(action, state=ActionState.CANCELLED, message=message, updated_ts=now,
                                            finished_ts=now)
            record, version = state_record(cancelled), found[1]
            try:
                self._znodes.commit(lambda t: t.set_data(path(action_id, "state"), record, version=version),
                                    f"cancelling action {action_id}")
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
        self._znodes.connected("listing actions")
        try:
            ids = self._znodes.children()
        except NoNodeError:
            return []
        created = self._creation_times(ids)
        newest = sorted(created, key=lambda i: (-created[i], i))[:limit]  # only these are read whole
        actions = [action for action, _ in self._znodes.read_many(newest).values()]
        actions.sort(key=lambda a: (-a.created_ts, a.id))
        self._listed = (now, limit, actions)
        return actions

    def _creation_times(self, ids: Iterable[str]) -> dict[str, float]:
        """When each action was submitted: submissions never change, so each is read once
        per process (pipelined) and remembered; actions deleted meanwhile are forgotten."""
        ids = set(ids)
        with self._lock:
            known = {i: t for i, t in self._created.items() if i in ids}
        known.update(self._znodes.creation_times(ids - set(known)))
        with self._lock:
            self._created = known
        return known

    def attempts(self, action_id: str) -> list[Attempt]:
        return self._znodes.attempts(action_id)

    def wait_for(self, action_id: str, predicate: Callable[[Action], bool], timeout: float) -> Optional[Action]:
        """Block until the action satisfies `predicate` (a watch on its state), or timeout.

        Returns the action as last read (check the predicate again to tell a timeout)."""
        deadline = time.monotonic() + timeout
        changed = threading.Event()
        watch = lambda event: changed.set()  # noqa: E731 (one function: kazoo keeps one watch per function)
        while True:
            changed.clear()
            self._znodes.watch_state(action_id, watch)
            action = self.get(action_id)
            remaining = deadline - time.monotonic()
            if (action is not None and predicate(action)) or remaining <= 0:
                return action
            changed.wait(remaining)

    def close(self) -> None:
        if self._own_client:
            self._client.stop()
            self._client.close()

    # -- the leader's (`leader_view.LeaderView`) -------------------------------------

    def lead(self, fence: str) -> int:
        """Become the journal's writer, fenced by `fence` (the election znode): read every
        action. Returns how many are live. StoreError when they cannot be read."""
        return self._leader.lead(fence)

    def unlead(self) -> None:
        """No longer the leader: forget the actions, write nothing more."""
        self._leader.unlead()

    def pending(self) -> int:
        """Actions not delivered yet, as the leader knows them (0 on other instances)."""
        return self._leader.pending()

    def due(self, now: float, limit: int = 100) -> list[Action]:
        """Live actions whose next step is due (from the leader's memory), soonest first."""
        return self._leader.due(now, limit)

    def next_due(self) -> Optional[float]:
        return self._leader.next_due()

    def begin_attempt(self, action: Action, cluster_id: str, node_id: str) -> Optional[int]:
        """Attempt n is about to be sent: n, or None when it may not be (see LeaderView)."""
        return self._leader.begin_attempt(action, cluster_id, node_id)

    def end_attempt(self, action_id: str, n: int, outcome: str, detail: str, state: ActionState,
                    next_ts: float, message: str) -> bool:
        return self._leader.end_attempt(action_id, n, outcome, detail, state, next_ts, message)

    def update(self, action: Action, state: ActionState, next_ts: float, message: str,
               agent_history: Optional[list] = None) -> bool:
        return self._leader.update(action, state, next_ts, message, agent_history)


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
