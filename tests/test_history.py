"""PollHistory: the recent polls of a target, failures kept longer, and FleetState keeping it."""
from __future__ import annotations

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.history import FAILURES, RECENT, PollHistory, PollOutcome
from replicante_poller.polling.poll import PollResult
from replicante_poller.polling.state import FleetState
from replicante_poller.reasons import Reason, Status

TARGET = Target("rs0", "https://a:37017", None, PollSettings(10.0, 1.0), TlsSettings())


def result(started: float, ok: bool, message: str = "") -> PollResult:
    if ok:
        return PollResult(TARGET, Status.UP, None, message or "all checks passed", started, 0.25)
    return PollResult(TARGET, Status.AGENT_DOWN, Reason.TIMEOUT, message or f"timed out at {started}", started, 0.8)


def history(pattern: str) -> PollHistory:
    """'+' a success, '-' a failure, one poll a second from t=1000."""
    value = PollHistory()
    for i, char in enumerate(pattern):
        value = value.add(result(1000.0 + i, char == "+"))
    return value


def test_outcomes_round_trip_oldest_first() -> None:
    outcomes = history("+-").outcomes()
    assert outcomes == (
        PollOutcome(1000.0, 0.25, Status.UP, None, "all checks passed"),
        PollOutcome(1001.0, outcomes[1].duration, Status.AGENT_DOWN, Reason.TIMEOUT, "timed out at 1001.0"),
    )
    assert abs(outcomes[1].duration - 0.8) < 1e-6 and not outcomes[1].ok and outcomes[0].ok


def test_keeps_the_last_polls_and_older_failures() -> None:
    pattern = "-" * 3 + "+" * 40  # three early failures, then a long healthy run
    outcomes = history(pattern).outcomes()
    assert len(outcomes) == RECENT + 3
    assert [o.started for o in outcomes[:3]] == [1000.0, 1001.0, 1002.0]
    assert [o.ok for o in outcomes[3:]] == [True] * RECENT
    assert outcomes[-1].started == 1000.0 + len(pattern) - 1


def test_older_failures_are_bounded_too() -> None:
    pattern = "-" * 50 + "+" * 40
    outcomes = history(pattern).outcomes()
    assert len(outcomes) == RECENT + FAILURES
    assert [o.started for o in outcomes[:FAILURES]] == [1000.0 + i for i in range(50 - FAILURES, 50)]
    assert len(history("-" * 100)) == RECENT  # the latest polls are the latest failures


def test_equal_messages_share_one_string() -> None:
    value = PollHistory()
    for i in range(5):
        value = value.add(result(1000.0 + i, True, "".join(["all checks ", "passed"])))  # a new str each time
    assert len({id(m) for m in value.messages}) == 1


def test_fleet_state_keeps_history_per_target_and_across_set_targets() -> None:
    state = FleetState(fall=1, rise=1)
    state.set_targets([TARGET])
    for i, ok in enumerate([True, False, True]):
        state.record(result(1000.0 + i, ok))
    state.set_targets([TARGET])  # a discovery refresh keeps the view
    (view,) = state.snapshot()
    assert [o.status for o in view.recent.outcomes()] == [Status.UP, Status.AGENT_DOWN, Status.UP]
