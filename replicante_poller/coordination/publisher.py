"""When this instance publishes the health of the clusters it holds (`coordination.health`).

A cluster is published as soon as its health changed (its `health.digest`: status, reason,
health and streak, not mere timestamps), and otherwise at least every `refresh` seconds
while it has new polls (so other instances show recent times), once more at handover. The
scheduler thread asks (`due`, `final`); the documents go to the coordination thread, which
writes them. A document over `health.MAX_DOCUMENT` is not published (one warning per
cluster while it stays too large; its next owner starts from its own state).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable

from ..polling.state import TargetView
from .health import MAX_DOCUMENT, digest, encode, latest

log = logging.getLogger(__name__)
CHECK_PERIOD = 1.0  # seconds between two looks for changed health (a change is published this late at most)


@dataclasses.dataclass(frozen=True)
class _Last:
    digest: str
    latest: float  # the start of the latest poll published
    at: float  # when published


class Publisher:
    """Decides which clusters' documents to publish; `refresh()` is read at each look."""

    def __init__(self, by: str, refresh: Callable[[], float], clock: Callable[[], float]):
        self._by, self._refresh, self._clock = by, refresh, clock
        self._last: dict[str, _Last] = {}
        self._too_large: set[str] = set()

    def due(self, views: Iterable[TargetView]) -> dict[str, bytes]:
        """Documents of the clusters among `views` (those held) to publish now. Clusters no
        longer among them are forgotten: taken again later, they are published at once."""
        now = self._clock()
        clusters = _by_cluster(views)
        self._last = {c: last for c, last in self._last.items() if c in clusters}
        documents = {}
        for cluster, members in clusters.items():
            last, now_digest, newest = self._last.get(cluster), digest(members), latest(members)
            if last is not None and last.digest == now_digest and (
                    last.latest == newest or now - last.at < self._refresh()):
                continue
            document = self._encode(cluster, members, now)
            self._last[cluster] = _Last(now_digest, newest, now)
            if document is not None:
                documents[cluster] = document
        return documents

    def final(self, views: Iterable[TargetView]) -> dict[str, bytes]:
        """Documents of every cluster among `views`, whatever changed (a handover)."""
        now = self._clock()
        documents = {}
        for cluster, members in _by_cluster(views).items():
            self._last.pop(cluster, None)
            document = self._encode(cluster, members, now)
            if document is not None:
                documents[cluster] = document
        return documents

    def _encode(self, cluster: str, views: list[TargetView], now: float) -> "bytes | None":
        document = encode(cluster, views, self._by, now)
        if len(document) <= MAX_DOCUMENT:
            self._too_large.discard(cluster)
            return document
        if cluster not in self._too_large:
            self._too_large.add(cluster)
            log.warning("health of cluster %s not published: its document is %d bytes (at most %d); "
                        "its next owner will start from its own state", cluster, len(document), MAX_DOCUMENT)
        return None


def _by_cluster(views: Iterable[TargetView]) -> dict[str, list[TargetView]]:
    clusters: dict[str, list[TargetView]] = {}
    for view in views:
        clusters.setdefault(view.target.cluster_id, []).append(view)
    return clusters
