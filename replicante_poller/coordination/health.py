"""The health of one cluster as published in ZooKeeper (`{path}/health/{quoted cluster}`).

The document is the state file's per-target format (`statefile.encode_view`) without the
shards (a znode holds at most 1 MB), with who published it and when:
`{"format": 1, "cluster": ID, "by": INSTANCE, "published_at": T, "targets": [...]}`.
It is read back as strictly as the state file; a document that cannot be used is a value
(`Unusable`, naming its znode), never an exception. Pure: no kazoo here.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Union

from ..jsoncheck import Problem, expect_object, expect_string, fail
from ..polling.discovery import Target
from ..polling.state import TargetView
from ..polling.statefile import Reading, decode_views, encode_view
from ..polling.validation import Invalid, decode_json

FORMAT = 1
MAX_DOCUMENT = 900_000  # bytes: ZooKeeper refuses a znode over 1 MB (jute.maxbuffer)
CLOCK_SKEW = 5.0  # seconds another instance's clock may be ahead of this one's


@dataclasses.dataclass(frozen=True)
class Stored:
    """A health znode as read: its path, data and version (mzxid: changes at every write)."""

    znode: str
    data: bytes
    mzxid: int


@dataclasses.dataclass(frozen=True)
class Published:
    """A cluster's health as an instance published it."""

    cluster: str
    by: str
    published_at: float
    views: tuple[TargetView, ...]


@dataclasses.dataclass(frozen=True)
class Unusable:
    """A health znode that cannot be used, and why (the first bad field)."""

    znode: str
    problem: str

    def __str__(self) -> str:
        return f"health znode {self.znode} cannot be used ({self.problem}), ignored"


def encode(cluster: str, views: Iterable[TargetView], by: str, published_at: float) -> bytes:
    """The document of `cluster`'s views (compact JSON, UTF-8)."""
    document = {"format": FORMAT, "cluster": cluster, "by": by, "published_at": published_at,
                "targets": [encode_view(v, shards=False) for v in views]}
    return json.dumps(document, separators=(",", ":")).encode()


def decode(stored: Stored, cluster: str, targets: Iterable[Target], now: float,
           max_retry_after: float) -> Union[Published, Unusable]:
    """The published views of `cluster`'s `targets` (others dropped unread), checked as the
    state file is; times may be up to CLOCK_SKEW ahead of `now` (another machine's clock)."""
    document = decode_json(stored.data)
    if isinstance(document, Invalid):
        return Unusable(stored.znode, "not strict JSON: " + document.message.replace("body", "the data", 1))
    reading = Reading(now + CLOCK_SKEW, max_retry_after)
    try:
        document = expect_object(document, "$")
        if type(document.get("format")) is not int or document["format"] != FORMAT:
            fail("$.format", f"unknown format {document.get('format')!r} (this version writes {FORMAT})")
        if expect_string(document.get("cluster"), "$.cluster") != cluster:
            fail("$.cluster", f"{document['cluster']!r} is not the znode's cluster {cluster!r}")
        by = expect_string(document.get("by"), "$.by")
        published_at = reading.past(document.get("published_at"), "$.published_at")
        mine = [t for t in targets if t.cluster_id == cluster]
        views = decode_views(document.get("targets"), "$.targets", mine, reading)
    except Problem as problem:
        return Unusable(stored.znode, str(problem))
    return Published(cluster, by, published_at, tuple(views))


Signature = tuple  # what of one view a change of health is measured by (`signature`)


def signature(view: TargetView) -> Signature:
    """What a change of an agent's health is measured by: its status, reason, debounced
    health and its streak, flapping, API generation and node status; never times or
    messages (a poll that only moved timestamps changes nothing here)."""
    result = view.result
    return (view.health.state, view.health.streak, view.flapping, view.api,
            result.status if result else None, result.reason if result else None,
            result.node_status if result else None)


def digest(views: Iterable[TargetView]) -> dict[tuple[str, str], Signature]:
    """A cluster's health as compared between two looks: each agent's `signature`, by agent
    (order does not matter; an agent added or gone is a change)."""
    return {view.target.key: signature(view) for view in views}


def latest(views: Iterable[TargetView]) -> float:
    """When the latest poll among `views` started (0 without any)."""
    return max((v.result.started for v in views if v.result is not None), default=0.0)


def newest(*sources: Iterable[TargetView]) -> list[TargetView]:
    """Of the views of each target among `sources`, the one with the latest poll (the first
    given on a tie)."""
    chosen: dict[tuple[str, str], TargetView] = {}
    for views in sources:
        for view in views:
            known = chosen.get(view.target.key)
            if known is None or _started(view) > _started(known):
                chosen[view.target.key] = view
    return list(chosen.values())


def _started(view: TargetView) -> float:
    return view.result.started if view.result is not None else -1.0

