"""One wall-clock deadline per poll, enforced by a single reaper thread.

Socket timeouts bound each operation, not a whole poll: a server that drips one byte a
second never trips them. The reaper holds a duplicate of each poll's socket descriptor
and, when the poll's deadline passes, shuts the connection down, which wakes any blocked
connect, handshake or read at once. The poll then sees `expired` and reports a timeout.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)


class Watch:
    """The deadline of one poll and the socket it guards."""

    __slots__ = ("deadline", "_lock", "_sock", "_expired", "_done", "connected")

    def __init__(self, deadline: float):
        self.deadline = deadline
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._expired = False
        self._done = False
        self.connected = False

    @property
    def expired(self) -> bool:
        """Whether the reaper ended this poll."""
        return self._expired

    @property
    def done(self) -> bool:
        """Whether the poll is over (`close` was called): its deadline no longer matters."""
        return self._done

    def attach(self, sock: socket.socket) -> None:
        """Guard `sock` (the TCP connection is up); shut it at once if already expired."""
        dup = sock.dup()
        with self._lock:
            self.connected = True
            if self._sock is not None:
                self._sock.close()
            self._sock = dup
            if self._expired:
                _shutdown(dup)

    def expire(self) -> None:
        """Called by the reaper at the deadline."""
        with self._lock:
            if self._done:
                return
            self._expired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def close(self) -> None:
        """The poll is over: release the duplicate descriptor."""
        with self._lock:
            self._done = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer: nothing is blocked on it


class DeadlineReaper:
    """A thread that expires watches whose deadline passed (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, on_error: Callable[[], None] = lambda: None):
        """`on_error` is called (after the log line) for each unexpected error the loop survives."""
        self._clock, self._on_error = clock, on_error
        self._heap: list[tuple[float, int, Watch]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="deadline-reaper", daemon=True)

    def start(self) -> "DeadlineReaper":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join()

    def watch(self, timeout: float) -> Watch:
        """A new Watch that expires `timeout` seconds from now."""
        watch = Watch(self._clock() + timeout)
        with self._cond:
            heapq.heappush(self._heap, (watch.deadline, next(self._seq), watch))
            if self._heap[0][2] is watch:
                self._cond.notify()
        return watch

    def _run(self) -> None:
        while True:
            with self._cond:
                due: list[Watch] = []
                while not due:
                    if self._stopping:
                        return
                    now = self._clock()
                    while self._heap and self._heap[0][0] <= now:
                        watch = heapq.heappop(self._heap)[2]
                        if not watch.done:
                            due.append(watch)
                    # Polls that ended need no wake-up at their deadline: drop them from
                    # the front, so the reaper sleeps until the first poll still running
                    # (one wake-up per `timeout` or so, not one per poll).
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    if not due:
                        wait = self._heap[0][0] - now if self._heap else None
                        self._cond.wait(wait)
            for watch in due:
                try:
                    watch.expire()
                except Exception:  # a reaper that dies would let every poll hang
                    log.exception("expiring a poll deadline failed")
                    self._on_error()
