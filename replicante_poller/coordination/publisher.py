"""When this instance publishes the health of the clusters it holds (`coordination.health`).

A cluster is published as soon as its health changed (its `health.digest`: status, reason,
health and streak, not mere timestamps), and otherwise at least every `refresh` seconds
while it has new polls (so other instances show recent times), once more at handover. The
scheduler thread asks (`due`, `final`); the documents go to the coordination thread, which
writes them. An agent's `signature` is computed again only when its view is a new object
(a poll, a restore): `benchmarks/bench_publisher.py` measures a look. A document over
`health.MAX_DOCUMENT` is not published (one warning per cluster while it stays too large;
its next owner starts from its own state).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterable

from ..polling.state import TargetView
from .health import MAX_DOCUMENT, Signature, encode, latest, signature

log = logging.getLogger(__name__)
CHECK_PERIOD = 1.0  # seconds between two looks for changed health (a change is published this late at most)


@dataclasses.dataclass(frozen=True)
class _Last:
    digest: dict[tuple[str, str], Signature]  # each agent's signature, as published
    latest: float  # the start of the latest poll published
    at: float  # when published


class Publisher:
    """Decides which clusters' documents to publish; `refresh()` is read at each look."""

    def __init__(self, by: str, refresh: Callable[[], float], clock: Callable[[], float]):
        self._by, self._refresh, self._clock = by, refresh, clock
        self._last: dict[str, _Last] = {}
        self._too_large: set[str] = set()
        self._seen: dict[tuple[str, str], tuple[TargetView, Signature]] = {}  # each agent's last view looked at

    def due(self, views: Iterable[TargetView]) -> dict[str, bytes]:
        """Documents of the clusters among `views` (those held) to publish now. Clusters no
        longer among them are forgotten: taken again later, they are published at once."""
        now = self._clock()
        clusters = _by_cluster(views)
        self._last = {c: last for c, last in self._last.items() if c in clusters}
        documents = {}
        seen, self._seen = self._seen, {}
        for cluster, members in clusters.items():
            last, now_digest, newest = self._last.get(cluster), self._digest(members, seen), latest(members)
            if last is not None and last.digest == now_digest and (
                    last.latest == newest or now - last.at < self._refresh()):
                continue
            document = self._encode(cluster, members, now)
            self._last[cluster] = _Last(now_digest, newest, now)
            if document is not None:
                documents[cluster] = document
        return documents

    def _digest(self, members: list[TargetView], seen: dict[tuple[str, str], tuple[TargetView, Signature]]
                ) -> dict[tuple[str, str], Signature]:
        """`health.digest` of one cluster, reusing the signatures of views seen unchanged at the
        last look (the same objects: views are immutable and replaced at every poll)."""
        digest, kept = {}, self._seen
        for view in members:
            key = view.target.key
            known = seen.get(key)
            value = known[1] if known is not None and known[0] is view else signature(view)
            kept[key] = (view, value)
            digest[key] = value
        return digest

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
