"""Rendezvous (highest random weight) assignment of clusters over live members.

Every member computes the same answer from the same member list; when a member joins or
leaves, only the clusters it gains or loses move (about 1/n of them).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional


def weight(cluster_id: str, member: str) -> int:
    """The member's stable pseudo-random weight for the cluster."""
    digest = hashlib.sha256(f"{cluster_id}\0{member}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def owner(cluster_id: str, members: Iterable[str]) -> Optional[str]:
    """The member with the highest weight for the cluster (ties by name), None without members."""
    best: Optional[tuple[int, str]] = None
    for member in members:
        candidate = (weight(cluster_id, member), member)
        if best is None or candidate > best:
            best = candidate
    return best[1] if best else None


def assigned(me: str, clusters: Iterable[str], members: Iterable[str]) -> frozenset[str]:
    """The clusters assigned to `me` among `members` (`me` counted even if not listed yet)."""
    everyone = set(members) | {me}
    return frozenset(c for c in clusters if owner(c, everyone) == me)


def assignment(clusters: Iterable[str], members: Iterable[str]) -> dict[str, frozenset[str]]:
    """Every member's clusters."""
    listed = tuple(members)
    shares: dict[str, set[str]] = {m: set() for m in listed}
    for cluster in clusters:
        chosen = owner(cluster, listed)
        if chosen is not None:
            shares[chosen].add(cluster)
    return {m: frozenset(s) for m, s in shares.items()}
