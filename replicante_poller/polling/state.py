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


class FleetState:
    """Latest results, health and node ownership of every known target."""

    def __init__(self, fall: int, rise: int, flap_window: float = FLAP_WINDOW, flap_threshold: int = FLAP_THRESHOLD,
                 max_retry_after: float = MAX_RETRY_AFTER):
        self.configure(fall, rise, flap_window, flap_threshold, max_retry_after)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._views: dict[tuple[str, str], TargetView] = {}
        self._owners: dict[tuple[str, str], tuple[str, str]] = {}  # (cluster, node_id) -> target key

    def configure(self, fall: int, rise: int, flap_window: float = FLAP_WINDOW, flap_threshold: int = FLAP_THRESHOLD,
                  max_retry_after: float = MAX_RETRY_AFTER) -> None:
        """Set the health policy and the Retry-After cap (at start and on reload)."""
        self.policy = HealthPolicy(fall, rise, flap_window, flap_threshold)
        self._max_retry_after = max_retry_after

    def set_targets(self, targets: Iterable[Target]) -> None:
        """Track exactly `targets`: unchanged keys keep their state, removed ones go."""
        with self._lock:
            old = self._views
            self._views = {
                t.key: dataclasses.replace(old[t.key], target=t) if t.key in old else TargetView(t)
                for t in targets
            }
            self._owners = {node: key for node, key in self._owners.items() if key in self._views}

    def record(self, result: PollResult) -> Optional[TargetView]:
        """Fold one poll result in; None when its target was removed meanwhile."""
        key = result.target.key
        view = self._views.get(key)
        if view is None:
            return None
        if result.ok:
            result = self._check_duplicate(result)
        last_success = result.started + result.duration if result.ok else view.last_success
        deferred = None
        if result.retry_after is not None:
            deferred = result.started + min(result.retry_after, self._max_retry_after)
        health = view.health.apply(result.ok, self.policy, result.started)
        api = result.api or view.api  # a poll that learned nothing keeps what was known
        new = TargetView(view.target, result, health, last_success, deferred, health.flapping(self.policy), api)
        with self._lock:
            if key in self._views:
                self._views[key] = new
                self._changed.notify_all()
        return new

    def _check_duplicate(self, result: PollResult) -> PollResult:
        """NODE_DOWN when another live agent of the cluster already reports this node id."""
        assert result.datastore is not None
        node = (result.target.cluster_id, result.datastore.node_id)
        owner_key = self._owners.get(node)
        if owner_key is not None and owner_key != result.target.key:
            owner = self._views.get(owner_key)
            latest = owner.result if owner else None
            if (latest is not None and latest.ok and latest.datastore is not None
                    and latest.datastore.node_id == node[1]
                    and result.started - latest.started < latest.target.poll.interval):
                return dataclasses.replace(
                    result, status=Status.NODE_DOWN, reason=Reason.DUPLICATE_NODE,
                    message=f"node id {node[1]!r} is already reported by {owner_key[1]} in cluster {node[0]!r}",
                )
        self._owners[node] = result.target.key
        return result

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
