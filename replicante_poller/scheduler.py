"""When each target is polled: a stable slot inside its interval, and the due-time heap.

A target's slot is a hash of its identity, so every poller instance and every restart
polls it at the same phase, and a fleet's polls spread evenly over the interval instead of
firing at once. Pure and clock-free: the service loop passes `now` in.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
from typing import Iterable, Optional

from .discovery import Target


SLOT_GRID = 0.1  # seconds: slots fall on this grid, so polls due together start together


def slot(target: Target) -> float:
    """The target's phase in [0, interval), on the slot grid: stable across restarts and instances.

    The grid makes the targets of one grid step due at the same instant: one scheduler
    wake-up starts them together instead of one wake-up per poll, and a poller that
    idles between polls pays for cold caches once per step, not once per poll
    (benchmarks/README.md: about a third of the CPU per poll at 100 polls/s).
    """
    digest = hashlib.sha256(f"{target.cluster_id}\0{target.url}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return math.floor(fraction * target.poll.interval / SLOT_GRID) * SLOT_GRID


def next_slot(target: Target, now: float) -> float:
    """The first time at or after `now` that falls on the target's slot."""
    interval = target.poll.interval
    phase = slot(target)
    cycles = math.ceil((now - phase) / interval)
    earlier = phase + (cycles - 1) * interval  # the division may round up: `now` on a slot is that slot
    return earlier if earlier >= now else phase + cycles * interval


@dataclasses.dataclass(frozen=True)
class Due:
    """A poll that is due: its target, its slot time, and how many slots were missed."""

    target: Target
    due: float
    missed: int = 0


class Schedule:
    """A heap of due times over the current targets."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._targets: dict[tuple[str, str], Target] = {}
        self._seq = itertools.count()

    def set_targets(self, targets: Iterable[Target], now: float) -> None:
        """Schedule exactly `targets`; a target whose interval is unchanged keeps its slot."""
        new = {t.key: t for t in targets}
        keep = {k for k, t in new.items() if k in self._targets and self._targets[k].poll.interval == t.poll.interval}
        self._heap = [e for e in self._heap if e[2] in keep]
        heapq.heapify(self._heap)
        for key, target in new.items():
            if key not in keep:
                heapq.heappush(self._heap, (next_slot(target, now), next(self._seq), key))
        self._targets = new

    def pop_due(self, now: float) -> list[Due]:
        """Every poll due at `now`, each target rescheduled at its next slot after now."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            when, _, key = heapq.heappop(self._heap)
            target = self._targets[key]
            interval = target.poll.interval
            missed = max(0, math.floor((now - when) / interval))
            slot_time, following = when + missed * interval, when + (missed + 1) * interval
            while following <= now:  # float rounding must never make a slot due twice
                missed, slot_time, following = missed + 1, following, following + interval
            due.append(Due(target, slot_time, missed))
            heapq.heappush(self._heap, (following, next(self._seq), key))
        return due

    def next_due(self) -> Optional[float]:
        """When the earliest poll is due, or None without targets."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._targets)
