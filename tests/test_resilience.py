"""Threads survive the unexpected, stuck polls are visible, TLS material is reloaded."""
from __future__ import annotations

import queue
import socket
import threading

import trustme

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.deadlines import DeadlineReaper
from replicante_poller.polling.discovery import Target
from replicante_poller.web.metrics import PollerMetrics, new_registry, sample
from replicante_poller.polling.pool import WorkerPool
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.scheduler import Due
from replicante_poller.polling.tls import TlsContexts
from replicante_poller.polling.transport import Transport

TARGET = Target("rs", "https://127.0.0.1:9", None, PollSettings(interval=10, timeout=0.05), TlsSettings())
REFUSING = Target("rs", "https://127.0.0.1:9", None, PollSettings(interval=10, timeout=5), TlsSettings())


class ExplodingContexts(TlsContexts):
    """The first lookup raises like a bug would; later ones work."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def get(self, tls):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("boom")
        return super().get(tls)


class BlockingContexts(TlsContexts):
    """Lookups block until released: a poll that hangs where no deadline reaches."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def get(self, tls):
        self.entered.set()
        self.release.wait(10)
        return super().get(tls)


def pool_with(contexts: TlsContexts, registry, monotonic=None):
    results: "queue.Queue[object]" = queue.Queue()
    reaper = DeadlineReaper().start()
    metrics = PollerMetrics(registry, lambda: [])
    pool = WorkerPool(1, Transport(contexts, reaper=reaper), results, metrics, **({"monotonic": monotonic} if monotonic else {}))
    metrics.observe_pool(pool.queued, pool.busy, pool.stuck)  # as the service wires them
    pool.start()
    return pool, results, reaper


def test_a_worker_survives_an_unexpected_exception_and_counts_it():
    registry = new_registry()
    pool, results, reaper = pool_with(ExplodingContexts(), registry)
    try:
        pool.submit(Due(REFUSING, 0.0))
        first = results.get(timeout=10)
        assert (first.status, first.reason) == (Status.AGENT_DOWN, Reason.INTERNAL)
        assert "boom" in first.message
        pool.submit(Due(REFUSING, 0.0))  # the same worker goes on: the next poll is a real one
        second = results.get(timeout=10)
        assert second.reason is Reason.CONNECT
        assert sample(registry, "replicante_poller_thread_errors_total", {"thread": "worker"}) == 1.0
    finally:
        pool.stop()
        reaper.stop()


def test_watchdog_counts_polls_in_flight_past_twice_their_deadline():
    registry = new_registry()
    contexts = BlockingContexts()
    now = [1000.0]
    pool, results, reaper = pool_with(contexts, registry, monotonic=lambda: now[0])
    try:
        pool.submit(Due(TARGET, 0.0))
        assert contexts.entered.wait(10)
        assert sample(registry, "replicante_poller_workers_busy") == 1.0
        assert sample(registry, "replicante_poller_polls_stuck") == 0.0
        now[0] += 3 * TARGET.poll.timeout  # the watchdog's clock passes twice the 50 ms deadline
        assert sample(registry, "replicante_poller_polls_stuck") == 1.0
        contexts.release.set()
        results.get(timeout=10)
        assert sample(registry, "replicante_poller_polls_stuck") == 0.0
    finally:
        contexts.release.set()
        pool.stop()
        reaper.stop()


def test_tls_contexts_are_shared_and_rebuilt_only_when_their_files_change(tmp_path):
    first, second = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "ca.pem"
    first.cert_pem.write_to_path(str(ca_file))
    contexts = TlsContexts()
    tls = TlsSettings(ca_file=str(ca_file))
    context = contexts.get(tls)
    assert contexts.get(TlsSettings(ca_file=str(ca_file), pins=frozenset({"sha256//" + "A" * 43 + "="}))) is context
    assert contexts.refresh() == [] and contexts.get(tls) is context  # unchanged: no rebuild
    second.cert_pem.write_to_path(str(ca_file))
    ca_file.write_bytes(ca_file.read_bytes() + b"\n")  # a new size, whatever the clock's resolution
    assert contexts.refresh() == []
    rebuilt = contexts.get(tls)
    assert rebuilt is not context
    ca_file.write_text("not a certificate")
    problems = contexts.refresh()
    assert problems and "cannot load TLS material" in problems[0]
    assert contexts.get(tls) is rebuilt  # a broken file keeps the last good context


def test_the_reaper_reports_an_unexpected_error_and_goes_on(caplog):
    """README: every thread loop, the deadline reaper too, logs and counts what it survives."""

    class FailingSocket:  # stands in for a watched socket whose shutdown fails unexpectedly
        def shutdown(self, how: int) -> None:
            raise RuntimeError("shutdown exploded")

        def close(self) -> None:
            pass

    reported = threading.Event()
    reaper = DeadlineReaper(on_error=reported.set).start()
    left, right = socket.socketpair()
    try:
        broken = reaper.watch(0.05)
        broken._sock = FailingSocket()  # type: ignore[assignment]
        assert reported.wait(5), "the error was not reported"
        healthy = reaper.watch(0.05)
        healthy.attach(left)
        left.settimeout(10)
        assert left.recv(1) == b"" and healthy.expired  # the reaper still works
        healthy.close()
    finally:
        left.close()
        right.close()
        reaper.stop()
    assert "expiring a poll deadline failed" in caplog.text and "shutdown exploded" in caplog.text
