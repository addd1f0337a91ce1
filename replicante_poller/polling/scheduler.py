"""When each target is polled, and the scheduler thread that starts the polls.

A target's slot is a hash of its identity, so every poller instance and every restart
polls it at the same phase, and a fleet's polls spread evenly over the interval instead of
firing at once. `Schedule` (the due-time heap) is pure: `now` is passed in. `Scheduler`
is the thread: the single writer of the fleet state (DESIGN section 3).
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import logging
import math
import queue
import threading
import time
from typing import Callable, Iterable, Mapping, Optional, Union

from ..reasons import Reason
from .discovery import Target
from .poll import PollResult
from .reporting import PollReporter
from .state import FleetState, TargetView

log = logging.getLogger(__name__)


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
    known: Optional[str] = None  # the agent's API generation as the state knows it


class Schedule:
    """A heap of due times over the current targets."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._targets: dict[tuple[str, str], Target] = {}
        self._seq = itertools.count()

    def set_targets(self, targets: Iterable[Target], now: float, since: Mapping[str, float] = {}) -> None:
        """Schedule exactly `targets`; a target whose interval is unchanged keeps its slot.

        `since[cluster]`: when another instance stopped polling the cluster (a handover); a
        new target of it whose slot passed since then is due at once, at that slot (its phase
        kept), so the handover misses no slot."""
        new = {t.key: t for t in targets}
        keep = {k for k, t in new.items() if k in self._targets and self._targets[k].poll.interval == t.poll.interval}
        self._heap = [e for e in self._heap if e[2] in keep]
        heapq.heapify(self._heap)
        for key, target in new.items():
            if key not in keep:
                when, stopped = next_slot(target, now), since.get(target.cluster_id)
                if stopped is not None and when - target.poll.interval > stopped:
                    when -= target.poll.interval
                heapq.heappush(self._heap, (when, next(self._seq), key))
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


Command = Callable[[], None]
_WAKE = object()
LOCAL_LOG_EVERY = 10.0  # seconds between log lines about the poller's own shortages
ERROR_PAUSE = 0.1  # after an unexpected error in the loop, so a persistent one cannot spin


class Scheduler:
    """The scheduler thread, single writer of the fleet state.

    It queues the polls that are due (`queue_due`: never one whose target is already queued
    or in flight, nor one its agent deferred with Retry-After), folds every result into the
    state and the metrics (`record`), and runs the service's periodic tasks and commands
    (a reload) on its own thread. It waits on one inbox (results, commands, wake-ups) with
    a timeout until the next slot or task: results, commands and `stop` wake it.
    """

    def __init__(self, state: FleetState, metrics: PollReporter, submit: Callable[[Due], bool],
                 inbox: "queue.Queue[object]", clock: Callable[[], float] = time.time):
        self._state, self._metrics, self._submit, self._inbox, self._clock = state, metrics, submit, inbox, clock
        self._schedule = Schedule()
        self._in_flight: set[tuple[str, str]] = set()
        self._unpolled: set[tuple[str, str]] = set()  # not polled since start or the last reload
        self.ready = threading.Event()  # every agent known at start polled once (or none known): /-/ready
        self._tasks: list[tuple[Callable[[], float], Command, list[float]]] = []
        self._idle_waiters: list[tuple[frozenset[str], Command]] = []  # see when_idle
        self._local = (0, -LOCAL_LOG_EVERY)  # local failures not logged yet, when the last line went out
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    # -- what the service calls ---------------------------------------------------

    def progress(self) -> tuple[int, int]:
        """(agents polled, agents known) since start or the last reload (any thread: approximate)."""
        known = len(self._state)
        return known - len(self._unpolled), known

    def set_targets(self, targets: Iterable[Target], since: Mapping[str, float] = {},
                    restored: Iterable[TargetView] = ()) -> None:
        """Schedule exactly `targets` (unchanged ones keep slot and state) and report when
        each has been polled once. From the scheduler thread, or before `start`. `since`:
        clusters handed over by another instance (`Schedule.set_targets`); `restored`: the
        views new targets start from (`FleetState.set_targets`)."""
        targets = tuple(targets)
        self._schedule.set_targets(targets, self._clock(), since)
        self._state.set_targets(targets, restored)
        self._metrics.targets_changed(len(targets))
        self._unpolled = {t.key for t in targets}
        if not self._unpolled:
            self.ready.set()

    def every(self, period: Callable[[], float], task: Command) -> None:
        """Run `task` on the scheduler thread every `period()` seconds (read after each run)."""
        self._tasks.append((period, task, [self._clock() + period()]))

    def when_idle(self, clusters: frozenset[str], command: Command) -> None:
        """Run `command` once no poll of `clusters` is queued or in flight (on the scheduler
        thread, which calls this): a released cluster's lock goes after its last poll."""
        self._idle_waiters.append((clusters, command))
        self._run_idle_waiters()

    def _run_idle_waiters(self) -> None:
        if not self._idle_waiters:
            return
        busy = {cluster for cluster, _ in self._in_flight}
        ready = [command for clusters, command in self._idle_waiters if not clusters & busy]
        self._idle_waiters = [(clusters, command) for clusters, command in self._idle_waiters if clusters & busy]
        for command in ready:
            command()

    def call(self, command: Command) -> None:
        """Run `command` on the scheduler thread, soon (from any thread)."""
        self._inbox.put(command)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop starting polls; results of polls still running are taken by `drain`."""
        self._stopping.set()
        self._inbox.put(_WAKE)
        if self._thread.is_alive():
            self._thread.join()

    def drain(self) -> None:
        """Record the results already in the inbox (after the workers stopped)."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, PollResult):
                self.record(item)

    # -- the decisions --------------------------------------------------------------

    def queue_due(self, now: float) -> None:
        """Queue every poll due at `now`, except those of targets deferred, queued or in flight."""
        for due in self._schedule.pop_due(now):
            if due.missed:
                self._metrics.poll_skipped("behind", due.missed)
            key = due.target.key
            view = self._state.view(key)
            if view is not None and view.deferred_until is not None and due.due < view.deferred_until:
                self._metrics.poll_skipped("deferred")
            elif key in self._in_flight:
                self._metrics.poll_skipped("in_flight")
            elif self._submit(dataclasses.replace(due, known=view.api) if view is not None else due):
                self._in_flight.add(key)
            else:
                self._metrics.poll_skipped("queue_full")

    def record(self, result: PollResult) -> None:
        """Fold one result into the state and the metrics; log when every target was polled.

        A `local` failure (the poller could not try: out of file descriptors) is counted and
        logged, at most once per LOCAL_LOG_EVERY, but changes nothing of the agent's state or
        health: it says nothing about the agent."""
        self._in_flight.discard(result.target.key)
        self._run_idle_waiters()
        if result.reason is Reason.LOCAL:
            self._metrics.poll_finished(False, Reason.LOCAL, result.duration)
            count, last = self._local[0] + 1, self._local[1]
            now = time.monotonic()
            if now - last >= LOCAL_LOG_EVERY:
                log.error("%d poll(s) could not be tried: %s (the agents' state is kept; raise the open-file limit "
                          "or lower [poller] workers)", count, result.message)
                count, last = 0, now
            self._local = (count, last)
            return
        view = self._state.record(result)
        if view is None or view.result is None:
            return
        final = view.result
        self._metrics.poll_finished(final.ok, final.reason, final.duration)
        if log.isEnabledFor(logging.DEBUG):  # every poll's outcome, for --log-level debug
            log.debug("poll of %s (%s): %s %s in %.3fs: %s", final.target.url, final.target.cluster_id,
                      final.status.value, final.reason.value if final.reason else "-", final.duration, final.message)
        if self._unpolled:
            self._unpolled.discard(result.target.key)
            if not self._unpolled:
                self.ready.set()
                views = self._state.snapshot()
                up = sum(1 for v in views if v.result is not None and v.result.ok)
                log.info("all %d agents polled: %d UP, %d down", len(views), up, len(views) - up)

    def next_wake(self) -> Optional[float]:
        """When the loop has something to do without being woken: a slot or a task."""
        times = [t for t in [self._schedule.next_due()] + [due[0] for _, _, due in self._tasks] if t is not None]
        return min(times) if times else None

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._run_tasks(self._clock())
                self.queue_due(self._clock())
                wake = self.next_wake()
                self._receive(None if wake is None else max(0.0, wake - self._clock()))
            except Exception:  # the top of the scheduler loop: log, count, keep going
                log.exception("scheduler loop error")
                self._metrics.thread_error("scheduler")
                self._stopping.wait(ERROR_PAUSE)

    def _run_tasks(self, now: float) -> None:
        for period, task, due in self._tasks:
            if now >= due[0]:
                due[0] = now + period()
                task()

    def _receive(self, timeout: Optional[float]) -> None:
        """Wait up to `timeout` for the inbox, then take what else is there."""
        try:
            item: Union[object, PollResult, Command] = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if isinstance(item, PollResult):
                self.record(item)
            elif callable(item):
                item()
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
