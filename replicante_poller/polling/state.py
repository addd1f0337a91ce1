"""Fleet state: the latest result and health of every target.

The scheduler thread is the single writer (`set_targets`, `record`); readers (metrics,
status API) take `snapshot()`, a copy made under a lock.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable, Iterable, Optional

from ..limits import FLAP_THRESHOLD, FLAP_WINDOW, MAX_RETRY_AFTER
from ..reasons import Reason, Status
from .discovery import Target
from .health import Health, HealthPolicy
from .history import PollHistory
from .poll import PollResult


@dataclasses.dataclass(frozen=True)
class TargetView:
    """What readers see of one target."""

    target: Target
    result: Optional[PollResult] = None
    health: Health = Health()
    last_success: Optional[float] = None
    deferred_until: Optional[float] = None  # the agent asked (Retry-After) not to be polled before
    flapping: bool = False  # health changed too often within the flap window
    api: Optional[str] = None  # the agent's API generation, as its answers last showed it
    # Its recent polls, failures kept longer: memory only (not in the state file), so not
    # part of what makes two views equal (a view restored from the file equals the saved one).
    recent: PollHistory = dataclasses.field(default=PollHistory(), compare=False)


@dataclasses.dataclass(frozen=True)
class Reported:
    """An agent another instance polls ([coordination]): its view as the instance `by`
    published it at `published_at` (both None when no instance reports it yet)."""

    view: TargetView
    by: Optional[str] = None
    published_at: Optional[float] = None


class FleetState:
    """Latest results, health and node ownership of every known target."""

    def __init__(self, fall: int, rise: int, flap_window: float = FLAP_WINDOW, flap_threshold: int = FLAP_THRESHOLD,
                 max_retry_after: float = MAX_RETRY_AFTER):
        self.configure(fall, rise, flap_window, flap_threshold, max_retry_after)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._views: dict[tuple[str, str], TargetView] = {}
        # Node ids claimed (writer thread only): each target's latest reported node id and
        # when, and who claims each (cluster, node id).
        self._claims: dict[tuple[str, str], tuple[str, float]] = {}
        self._claimants: dict[tuple[str, str], set[tuple[str, str]]] = {}

    def configure(self, fall: int, rise: int, flap_window: float = FLAP_WINDOW, flap_threshold: int = FLAP_THRESHOLD,
                  max_retry_after: float = MAX_RETRY_AFTER) -> None:
        """Set the health policy and the Retry-After cap (at start and on reload)."""
        self.policy = HealthPolicy(fall, rise, flap_window, flap_threshold)
        self._max_retry_after = max_retry_after

    def set_targets(self, targets: Iterable[Target], restored: Iterable[TargetView] = ()) -> None:
        """Track exactly `targets`: unchanged keys keep their state, removed ones go, new ones
        start from their view in `restored` if any (in the same step: no reader sees them
        unknown first)."""
        start = {v.target.key: v for v in restored}
        with self._lock:
            old = self._views
            self._views = {
                t.key: dataclasses.replace(old[t.key], target=t) if t.key in old else self._fresh(t, start.get(t.key))
                for t in targets
            }
            for key in [k for k in self._claims if k not in self._views]:
                self._unclaim(key)

    def _fresh(self, target: Target, restored: Optional[TargetView]) -> TargetView:
        if restored is None:
            return TargetView(target)
        return dataclasses.replace(restored, target=target, flapping=restored.health.flapping(self.policy))

    def record(self, result: PollResult) -> Optional[TargetView]:
        """Fold one poll result in; None when its target was removed meanwhile."""
        key = result.target.key
        view = self._views.get(key)
        if view is None:
            return None
        result = self._check_duplicate(result)
        last_success = result.started + result.duration if result.ok else view.last_success
        deferred = None
        if result.retry_after is not None:
            deferred = result.started + min(result.retry_after, self._max_retry_after)
        health = view.health.apply(result.ok, self.policy, result.started)
        api = result.api or view.api  # a poll that learned nothing keeps what was known
        new = TargetView(view.target, result, health, last_success, deferred, health.flapping(self.policy), api,
                         view.recent.add(result))
        with self._lock:
            if key in self._views:
                self._views[key] = new
                self._changed.notify_all()
        return new

    def _unclaim(self, key: tuple[str, str]) -> None:
        claim = self._claims.pop(key, None)
        if claim is not None:
            node = (key[0], claim[0])
            claimants = self._claimants.get(node)
            if claimants is not None:
                claimants.discard(key)
                if not claimants:
                    del self._claimants[node]

    def _check_duplicate(self, result: PollResult) -> PollResult:
        """NODE_DOWN `duplicate_node` for EVERY agent of the cluster that reported this node id
        within its interval: nobody keeps an identity by having reported it first, so an agent
        claiming another node's id cannot take it over when the real node misses a poll.

        A target claims the node id of its latest answer; a failed poll without an answer
        keeps its claim (for its interval), another node id or cluster moves or drops it."""
        key = result.target.key
        if result.reason is Reason.CLUSTER_MISMATCH:  # its node belongs to another cluster
            self._unclaim(key)
            return result
        if result.datastore is None:
            return result
        node_id = result.datastore.node_id
        if self._claims.get(key, (None,))[0] != node_id:
            self._unclaim(key)
        self._claims[key] = (node_id, result.started)
        node = (key[0], node_id)
        claimants = self._claimants.setdefault(node, set())
        claimants.add(key)
        others = []
        for other in claimants:
            view = self._views.get(other)
            if other != key and view is not None and result.started - self._claims[other][1] < view.target.poll.interval:
                others.append(other)
        if not others:
            return result
        for other in others:
            self._mark_duplicate(other, node_id, [key])
        return self._duplicate(result, node_id, others)

    @staticmethod
    def _duplicate(result: PollResult, node_id: str, others: list[tuple[str, str]]) -> PollResult:
        names = ", ".join(sorted(url for _, url in others))
        return dataclasses.replace(
            result, status=Status.NODE_DOWN, reason=Reason.DUPLICATE_NODE,
            message=f"node id {node_id!r} is also reported by {names} in cluster {result.target.cluster_id!r}: "
                    "every agent reporting it is NODE_DOWN, and gets no action, until only one does")

    def _mark_duplicate(self, key: tuple[str, str], node_id: str, others: list[tuple[str, str]]) -> None:
        """Another target's latest result becomes a duplicate now (its actions stop at once)."""
        view = self._views.get(key)
        latest = view.result if view is not None else None
        if (latest is None or latest.datastore is None or latest.datastore.node_id != node_id
                or latest.reason is Reason.DUPLICATE_NODE):
            return
        with self._lock:
            self._views[key] = dataclasses.replace(view, result=self._duplicate(latest, node_id, others))

    def restore(self, saved: Iterable[TargetView]) -> int:
        """Take back state saved by an earlier run, for targets still known; how many."""
        count = 0
        with self._lock:
            for view in saved:
                if view.target.key in self._views:
                    self._views[view.target.key] = dataclasses.replace(view, target=self._views[view.target.key].target)
                    count += 1
        return count

    def view(self, key: tuple[str, str]) -> Optional[TargetView]:
        """The current view of one target (writer thread)."""
        return self._views.get(key)

    def snapshot(self) -> list[TargetView]:
        """A copy of every target's view, safe to use from any thread."""
        with self._lock:
            return list(self._views.values())

    def wait_for(self, predicate: Callable[[list[TargetView]], bool], timeout: float) -> bool:
        """Block until `predicate(snapshot)` holds after a record, or `timeout` passes."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(list(self._views.values())), timeout)

    def __len__(self) -> int:
        return len(self._views)
