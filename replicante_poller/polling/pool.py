"""The worker pool: N threads that take due polls from a bounded queue and poll.

Each worker owns its AgentClient (its requests Session is not shared between threads) and
puts every PollResult, success or failure, on the results queue for the single writer.
Shutdown is a sentinel passed from worker to worker. Its figures (queued, busy, stuck) are
read by the metrics at scrape time; the pool itself binds no metric.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Optional

from ..reasons import Reason, Status
from .poll import PollResult, poll_target
from .reporting import PollReporter
from .scheduler import Due
from .transport import AgentClient, Transport

log = logging.getLogger(__name__)
_STOP = None
MIN_QUEUE = 256  # polls of one slot-grid step start together: room for a large fleet's step


class WorkerPool:
    """Polls what the scheduler queues; results go to `results`."""

    def __init__(self, workers: int, transport: Transport,
                 results: "queue.Queue[object]", metrics: PollReporter,
                 clock: Callable[[], float] = time.time, queue_size: Optional[int] = None,
                 monotonic: Callable[[], float] = time.monotonic):
        self.jobs: "queue.Queue[Optional[Due]]" = queue.Queue(maxsize=queue_size or max(workers * 4, MIN_QUEUE))
        self._results, self._metrics, self._clock, self._monotonic = results, metrics, clock, monotonic
        self._transport = transport
        self._current: list[Optional[tuple[float, float]]] = [None] * workers  # (started, deadline)
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"poll-worker-{i}", daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, due: Due) -> bool:
        """Queue a poll without blocking; False when the queue is full."""
        try:
            self.jobs.put_nowait(due)
            return True
        except queue.Full:
            return False

    def stop(self, timeout: Optional[float] = None) -> None:
        """Let in-flight polls finish (they end by their deadline), then end the workers."""
        while True:  # queued polls that never started are dropped, not run
            try:
                self.jobs.get_nowait()
            except queue.Empty:
                break
        self.jobs.put(_STOP)
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join(timeout)

    def queued(self) -> int:
        """Polls waiting for a worker."""
        return self.jobs.qsize()

    def busy(self) -> int:
        """Workers polling now."""
        return sum(1 for c in list(self._current) if c is not None)

    def stuck(self) -> int:
        """Polls in flight for longer than twice their deadline (the watchdog)."""
        now = self._monotonic()
        return sum(1 for c in list(self._current) if c is not None and now - c[0] > 2 * c[1])

    def _run(self, index: int) -> None:
        client = self._transport.client()
        try:
            while True:
                job = self.jobs.get()
                if job is _STOP:
                    self.jobs.put(_STOP)
                    return
                self._current[index] = (self._monotonic(), job.target.poll.timeout)
                try:
                    self._results.put(self._poll(client, job))
                finally:
                    self._current[index] = None
        finally:
            client.close()

    def _poll(self, client: AgentClient, job: Due) -> PollResult:
        start = self._clock()
        self._metrics.poll_started(start - job.due)
        try:
            return poll_target(client, job.target, self._clock, job.known)
        except Exception as exc:  # the top of the worker loop: log, count, keep going
            log.exception("poll of %s failed unexpectedly", job.target.url)
            self._metrics.thread_error("worker")
            return PollResult(job.target, Status.AGENT_DOWN, Reason.INTERNAL, f"internal error: {exc!r}",
                              start, self._clock() - start)
