"""The health instances published in ZooKeeper, decoded: for the status API (other
instances' clusters) and for the clusters this instance takes.

The coordination thread keeps the latest data of every health znode (`published()`);
this class decodes each once per version (znode mzxid) and per set of configured targets,
as strictly as the state file, for any thread. A znode that cannot be used is logged once
per version (one line naming it) and gives nothing.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Iterable, Mapping, Union

from ..polling.discovery import Target
from .health import Published, Stored, Unusable, decode

log = logging.getLogger(__name__)


class PeerHealth:
    """Decoded health documents by cluster, from `published()` (cluster -> Stored)."""

    def __init__(self, published: Callable[[], Mapping[str, Stored]], clock: Callable[[], float],
                 max_retry_after: Callable[[], float]):
        self._published, self._clock, self._max_retry_after = published, clock, max_retry_after
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[int, tuple[Target, ...], Union[Published, Unusable]]] = {}

    def reported(self, targets: Iterable[Target]) -> dict[str, Published]:
        """The usable health published of the clusters of `targets` (any thread), by cluster."""
        stored = self._published()
        with self._lock:
            self._memo = {c: m for c, m in self._memo.items() if c in stored}
        return self.decoded(stored, targets)

    def decoded(self, stored: Mapping[str, Stored], targets: Iterable[Target]) -> dict[str, Published]:
        """The usable documents among `stored` (cluster -> znode) of the clusters of
        `targets`, by cluster; each znode version is decoded (and logged if unusable) once."""
        by_cluster: dict[str, list[Target]] = {}
        for target in targets:
            by_cluster.setdefault(target.cluster_id, []).append(target)
        out: dict[str, Published] = {}
        with self._lock:
            for cluster, members in by_cluster.items():
                document = stored.get(cluster)
                if document is None:
                    continue
                key = tuple(members)
                memo = self._memo.get(cluster)
                if memo is None or memo[0] != document.mzxid or memo[1] != key:
                    decoded = decode(document, cluster, members, self._clock(), self._max_retry_after())
                    if isinstance(decoded, Unusable):
                        log.warning("%s", decoded)
                    memo = (document.mzxid, key, decoded)
                    self._memo[cluster] = memo
                if isinstance(memo[2], Published):
                    out[cluster] = memo[2]
        return out
