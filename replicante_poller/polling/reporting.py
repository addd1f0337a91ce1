"""What the poll path reports while it runs. `web.metrics.PollerMetrics` implements it, so the
poll path depends on this interface, not on the web layer above it."""
from __future__ import annotations

from typing import Optional, Protocol

from ..reasons import Reason


class PollReporter(Protocol):
    """Figures of the scheduler and the workers, as they happen."""

    def poll_started(self, lag: float) -> None:
        """A worker started a poll `lag` seconds after its slot."""

    def poll_finished(self, ok: bool, reason: Optional[Reason], duration: float) -> None:
        """A poll's result was recorded."""

    def poll_skipped(self, reason: str, count: int = 1) -> None:
        """A due poll was not started (in_flight, queue_full, behind, deferred)."""

    def targets_changed(self, count: int) -> None:
        """The scheduler now schedules `count` targets."""

    def thread_error(self, thread: str) -> None:
        """A thread loop survived an unexpected exception (already logged)."""
