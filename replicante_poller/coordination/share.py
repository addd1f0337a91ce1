"""This instance's share of a fleet several pollers poll (`[coordination] backend = zookeeper`).

It holds what the service needs to poll only its clusters: the clusters held (the
coordinator's locks), the state file's views waiting for their cluster to be taken, the
health this instance publishes (`Publisher`) and the health others published
(`PeerHealth`). The scheduler thread changes it (`take`, `publish`, `stop`); `held`,
`polls`, `reported` and `published_view` are read from any thread (`held` is an immutable
set replaced whole). Imported only in coordinated mode (it brings kazoo).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Mapping, Optional

from kazoo.client import KazooClient

from ..config import CoordinationSettings
from ..polling.discovery import Target
from ..polling.state import Reported, TargetView
from .health import Stored, newest
from .peers import PeerHealth
from .publisher import Publisher
from .zookeeper import ZkCoordinator


@dataclasses.dataclass(frozen=True)
class Taken:
    """What a change of the clusters held means for the scheduler."""

    released: frozenset[str]  # clusters to stop polling, then hand over
    final: dict[str, bytes]  # their health documents, published at the handover
    restored: list[TargetView]  # views the clusters taken start from
    from_zookeeper: int  # how many of those came from health published in ZooKeeper


class Share:
    """The clusters held and their health, published and read."""

    def __init__(self, settings: CoordinationSettings, instance_id: str, listen: str, client: KazooClient,
                 on_held: Callable[[frozenset[str], Mapping[str, float], Mapping[str, Stored]], None],
                 thread_error: Callable[[str], None], clock: Callable[[], float], refresh: Callable[[], float],
                 max_retry_after: Callable[[], float]):
        """`on_held(held, since, health)` is called on the coordination thread at every change
        of the clusters held; it hands them to the scheduler thread, which calls `take`."""
        self.coordinator = ZkCoordinator(settings, instance_id, listen, on_held, thread_error, client=client)
        self.held: frozenset[str] = frozenset()  # none until the session is up
        self._saved: list[TargetView] = []  # the state file's views of clusters not taken yet
        self._publisher = Publisher(instance_id, refresh, clock)
        self._peers = PeerHealth(self.coordinator.published, clock, max_retry_after)

    def restore_later(self, saved: list[TargetView]) -> None:
        """The state file's views, each restored when its cluster is first taken."""
        self._saved = saved

    def polls(self, target: Target) -> bool:
        """Whether this instance polls the target (its cluster is held here)."""
        return target.cluster_id in self.held

    def take(self, held: frozenset[str], health: Mapping[str, Stored], views: Iterable[TargetView],
             targets: Iterable[Target]) -> Taken:
        """Hold `held` from now (scheduler thread): the released clusters' final health (of
        `views`), and what each agent taken starts from, the newer of the health its last
        owner published (`health`) and this instance's state file."""
        released = self.held - held
        final = self._publisher.final(v for v in views if v.target.cluster_id in released)
        self.held = held
        saved = [view for view in self._saved if view.target.cluster_id in held]
        if saved:  # once, at the first take after start: later the cluster's state is another instance's
            self._saved = [view for view in self._saved if view.target.cluster_id not in held]
        published = [view for document in self._peers.decoded(health, targets).values() for view in document.views]
        restored, from_zookeeper = newest(published, saved), {id(view) for view in published}
        return Taken(released, final, restored, sum(1 for view in restored if id(view) in from_zookeeper))

    def publish(self, views: Iterable[TargetView]) -> None:
        """Hand the health of held clusters that changed (among `views`) to the coordinator."""
        documents = self._publisher.due(views)
        if documents:
            self.coordinator.publish(documents)

    def stop(self, views: Iterable[TargetView]) -> None:
        """After the last poll: publish the health of every held cluster (of `views`) for the
        next owners, then close the session, which releases every lock."""
        self.coordinator.publish(self._publisher.final(views))
        self.coordinator.stop()

    def reported(self, targets: Iterable[Target]) -> list[Reported]:
        """Agents among `targets` of clusters not held here (any thread), with the health their
        instance last published, or unknown."""
        held = self.held
        others = [t for t in targets if t.cluster_id not in held]
        by_key = {v.target.key: (v, p) for p in self._peers.reported(others).values() for v in p.views}
        out = []
        for target in others:
            view, document = by_key.get(target.key, (TargetView(target), None))
            out.append(Reported(view, document.by, document.published_at) if document else Reported(view))
        return out

    def published_view(self, target: Target, targets: Iterable[Target]) -> Optional[TargetView]:
        """The view of `target` its owner last published (`targets`: the configured ones), or None."""
        members = [t for t in targets if t.cluster_id == target.cluster_id]
        published = self._peers.reported(members)
        return next((v for p in published.values() for v in p.views if v.target.key == target.key), None)
