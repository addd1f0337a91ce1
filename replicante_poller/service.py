"""The poller service: wires discovery, scheduling, workers, state, metrics and the API.

One scheduler thread is the single writer of fleet state. Its loop waits on one inbox
queue (poll results and commands) with a timeout until the next slot, so it needs no
sleeps: results, reloads and stop all wake it.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

from .config import Config
from .deadlines import DeadlineReaper
from .discovery import Target, discover
from .errors import ConfigError
from .metrics import PollerMetrics, new_registry, render
from .poll import PollResult
from .pool import WorkerPool
from .scheduler import Schedule
from .state import FleetState, TargetView
from .status_api import StatusServer
from .tls import TlsContexts

log = logging.getLogger(__name__)
_WAKE = object()


class Service:
    """A running poller: `start()`, then `stop()` (or `wait()` for the stop event)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time, registry: object = None):
        self.config = config
        self._clock = clock
        self.registry = registry or new_registry()
        self.state = FleetState(config.poller.fall, config.poller.rise)
        self.metrics = PollerMetrics(self.registry, self.state.snapshot)
        self.contexts = TlsContexts()
        self.stopping = threading.Event()
        self._inbox: "queue.Queue[object]" = queue.Queue()
        self._reaper = DeadlineReaper()
        self._pool = WorkerPool(config.poller.workers, self.contexts, self._reaper, self._inbox, self.metrics, clock)
        self._schedule = Schedule()
        self._in_flight: set[tuple[str, str]] = set()
        self._targets: tuple[Target, ...] = ()
        self._api: Optional[StatusServer] = None
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Discover, build TLS contexts, open the listener and start polling.

        Raises ConfigError (bad discovery file or TLS material) and OSError (listen).
        """
        targets = discover(self.config)
        for target in targets:
            self.contexts.get(target.tls)
        self._api = StatusServer(self.config.http.host, self.config.http.port, self.state.snapshot,
                                 lambda: render(self.registry))
        self._apply_targets(targets)
        self.metrics.config_loaded(True, self._clock())
        self._reaper.start()
        self._pool.start()
        self._api.start()
        self._thread.start()
        log.info("polling %d agents; status on http://%s:%d/", len(targets), *self.api_address)

    @property
    def api_address(self) -> tuple[str, int]:
        assert self._api is not None, "service not started"
        return self._api.address

    def stop(self) -> None:
        """Stop scheduling, let in-flight polls end by their deadline, close everything."""
        self.stopping.set()
        self._inbox.put(_WAKE)
        if self._thread.is_alive():
            self._thread.join()
        self._pool.stop()
        self._drain()
        self._reaper.stop()
        if self._api is not None:
            self._api.stop()

    def snapshot(self) -> list[TargetView]:
        return self.state.snapshot()

    # -- the scheduler loop (single writer) -----------------------------------

    def _apply_targets(self, targets: tuple[Target, ...]) -> None:
        self._targets = targets
        self._schedule.set_targets(targets, self._clock())
        self.state.set_targets(targets)
        self.metrics.targets.set(len(targets))

    def _loop(self) -> None:
        next_refresh = self._clock() + self.config.discovery.refresh
        while not self.stopping.is_set():
            try:
                now = self._clock()
                if now >= next_refresh:
                    self._refresh_discovery()
                    next_refresh = now + self.config.discovery.refresh
                self._dispatch(now)
                due = self._schedule.next_due()
                wake = next_refresh if due is None else min(due, next_refresh)
                self._receive(max(0.0, wake - self._clock()))
            except Exception:  # the top of the scheduler loop: log, count, keep going
                log.exception("scheduler loop error")
                self.metrics.thread_error("scheduler")
                self.stopping.wait(0.1)

    def _dispatch(self, now: float) -> None:
        for due in self._schedule.pop_due(now):
            if due.missed:
                self.metrics.poll_skipped("behind", due.missed)
            key = due.target.key
            if key in self._in_flight:
                self.metrics.poll_skipped("in_flight")
            elif self._pool.submit(due):
                self._in_flight.add(key)
            else:
                self.metrics.poll_skipped("queue_full")

    def _receive(self, timeout: float) -> None:
        """Wait up to `timeout` for the inbox, then take whatever else is already there."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if isinstance(item, PollResult):
                self._record(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _record(self, result: PollResult) -> None:
        self._in_flight.discard(result.target.key)
        view = self.state.record(result)
        if view is not None and view.result is not None:
            final = view.result
            self.metrics.poll_finished(final.ok, final.reason, final.duration)

    def _drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, PollResult):
                self._record(item)

    def _refresh_discovery(self) -> None:
        problems = self.contexts.refresh()
        for problem in problems:
            log.error("TLS reload failed, keeping the previous context: %s", problem)
        try:
            targets = discover(self.config)
            for target in targets:
                self.contexts.get(target.tls)
        except ConfigError as exc:
            log.error("discovery refresh failed, keeping the last good targets: %s", exc)
            self.metrics.config_loaded(False, self._clock())
            return
        if targets != self._targets:
            log.info("discovery: %d agents (was %d)", len(targets), len(self._targets))
            self._apply_targets(targets)
        self.metrics.config_loaded(True, self._clock())
