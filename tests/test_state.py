"""FleetState and Health with hand-made PollResults: no transport, no clock."""
from __future__ import annotations

import pytest

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.health import Health, HealthState
from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo, Offset, Shard
from replicante_poller.polling.poll import PollResult
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.state import FleetState, TargetView

H, U, N = HealthState.HEALTHY, HealthState.UNHEALTHY, HealthState.UNKNOWN


def target(name: str, cluster: str = "rs0", interval: float = 10.0) -> Target:
    return Target(cluster, f"https://{name}:37017", None, PollSettings(interval, 1.0), TlsSettings())


def up(t: Target, node_id: str, started: float, duration: float = 0.25, cluster_id: str | None = None) -> PollResult:
    return PollResult(
        target=t, status=Status.UP, reason=None, message="all checks passed", started=started, duration=duration,
        agent=AgentInfo(AgentVersion("abc", "0.7.0", "not tainted")),
        datastore=DatastoreInfo(None, cluster_id or t.cluster_id, "MongoDB", node_id, "4.0.12"),
        shards=(Shard("rs0", "primary", None, Offset("seconds", 1_700_000_000), None),),
    )


def down(t: Target, started: float, status: Status = Status.AGENT_DOWN, reason: Reason = Reason.CONNECT) -> PollResult:
    return PollResult(t, status, reason, "GET /api/unstable/info/agent: connection refused", started, 0.01)


def fleet(*targets: Target, fall: int = 3, rise: int = 2) -> FleetState:
    state = FleetState(fall=fall, rise=rise)
    state.set_targets(targets)
    return state


def views(state: FleetState) -> dict[tuple[str, str], TargetView]:
    return {v.target.key: v for v in state.snapshot()}


# --- Health ------------------------------------------------------------------------------


def run_health(sequence: str, fall: int, rise: int) -> str:
    """Observe `sequence` ('+' success, '-' failure); the states after each, as H/U letters."""
    health, out = Health(), ""
    for char in sequence:
        health = health.observe(char == "+", fall, rise)
        out += "H" if health.state is H else "U"
    return out


@pytest.mark.parametrize("sequence, fall, rise, states", [
    ("+", 3, 2, "H"),
    ("-", 3, 2, "U"),  # the first poll decides an unknown target
    ("+--", 3, 2, "HHH"),
    ("+---", 3, 2, "HHHU"),
    ("+--+--", 3, 2, "HHHHHH"),  # a success resets the failure streak
    ("+---+", 3, 2, "HHHUU"),
    ("+---++", 3, 2, "HHHUUH"),
    ("-+-+-+", 3, 2, "UUUUUU"),  # flapping never reaches rise
    ("+-+-+-", 3, 2, "HHHHHH"),  # nor fall
    ("-++--", 3, 2, "UUHHH"),
    ("-++---", 3, 2, "UUHHHU"),
    ("+-+-", 1, 1, "HUHU"),
    ("+----", 1, 5, "HUUUU"),
    ("-++++-++++", 2, 5, "UUUUUUUUUU"),  # a failure restarts the count to rise
    ("-+++++", 2, 5, "UUUUUH"),
    ("+" + "-" * 9 + "+" * 9, 10, 10, "H" * 19),
])
def test_health_sequences(sequence: str, fall: int, rise: int, states: str) -> None:
    assert run_health(sequence, fall, rise) == states


def sv(health: Health) -> tuple[HealthState, int]:
    return health.state, health.streak


def test_health_starts_unknown_and_is_immutable() -> None:
    start = Health()
    assert (start.state, start.streak, start.healthy) == (N, 0, False)
    healthy = start.observe(True, 3, 2)
    assert sv(start) == (N, 0)
    assert sv(healthy) == (H, 0) and healthy.healthy
    assert sv(healthy.observe(False, 3, 2)) == (H, 1)
    assert sv(healthy.observe(False, 3, 2).observe(False, 3, 2)) == (H, 2)
    assert sv(Health(H, 2).observe(False, 3, 2)) == (U, 0)
    assert sv(Health(H, 2).observe(True, 3, 2)) == (H, 0)
    assert sv(Health(U, 1).observe(True, 3, 2)) == (H, 0)
    assert not Health(U, 1).observe(False, 3, 2).healthy
    with pytest.raises(AttributeError):
        healthy.state = U  # type: ignore[misc]


# --- FleetState: results, health, last success -----------------------------------------


def test_new_targets_are_unknown() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert len(state) == 2
    assert views(state) == {a.key: TargetView(a), b.key: TargetView(b)}
    view = views(state)[a.key]
    assert (view.result, view.health.state, view.last_success) == (None, N, None)


def test_record_success_and_failure() -> None:
    a = target("a")
    state = fleet(a)
    first = up(a, "n1", started=100.0, duration=0.5)
    view = state.record(first)
    assert view is not None
    assert (view.target, view.result, sv(view.health), view.last_success) == (a, first, (H, 0), 100.5)
    assert views(state)[a.key] == view

    failed = down(a, started=110.0)
    view = state.record(failed)
    assert view is not None
    assert view.result is failed
    assert view.result.status is Status.AGENT_DOWN
    assert sv(view.health) == (H, 1)  # latest poll is down, health debounced
    assert view.last_success == 100.5  # kept from the last success


def test_health_through_the_state_falls_and_rises() -> None:
    a = target("a")
    state = fleet(a, fall=2, rise=3)
    seen = []
    for i, ok in enumerate([True, False, False, True, True, True]):
        started = 100.0 + 10 * i
        view = state.record(up(a, "n1", started) if ok else down(a, started, Status.NODE_DOWN, Reason.SCHEMA))
        assert view is not None
        seen.append(view.health.state)
    assert seen == [H, H, U, U, U, H]
    assert views(state)[a.key].last_success == pytest.approx(150.25)


def test_last_success_is_none_until_a_success() -> None:
    a = target("a")
    state = fleet(a)
    for i in range(3):
        view = state.record(down(a, 100.0 + i))
        assert view is not None and view.last_success is None
    assert view.health.state is U


def test_record_does_not_touch_other_targets() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    state.record(up(a, "n1", 100.0))
    assert views(state)[b.key] == TargetView(b)


# --- duplicate node ids -----------------------------------------------------------------
# Two agents of a cluster reporting one node id within an interval are BOTH NODE_DOWN
# `duplicate_node`: nobody keeps an identity by having reported it first (issue 12: an agent
# claiming a real node's id took it over after one failed poll of the real node).


def assert_duplicate(view: TargetView | None, other: Target, node_id: str) -> None:
    assert view is not None and view.result is not None
    assert view.result.status is Status.NODE_DOWN
    assert view.result.reason is Reason.DUPLICATE_NODE
    assert not view.result.ok
    assert other.url in view.result.message and repr(node_id) in view.result.message


def assert_up(view: TargetView | None) -> None:
    assert view is not None and view.result is not None
    assert (view.result.status, view.result.reason) == (Status.UP, None)


def test_a_duplicate_makes_both_agents_node_down_at_once() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    view = state.record(up(b, "n1", 101.0))
    assert_duplicate(view, a, "n1")
    assert view is not None
    assert view.health.state is U  # a duplicate is a failure for health
    assert view.last_success is None
    assert view.result.datastore is not None and view.result.datastore.node_id == "n1"
    # the first reporter keeps nothing: its latest result is a duplicate from now on
    assert_duplicate(views(state)[a.key], b, "n1")


def test_duplicates_persist_on_both_sides_while_both_report() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b, fall=2)
    for cycle in range(4):
        first = state.record(up(a, "n1", 100.0 + 10 * cycle))
        second = state.record(up(b, "n1", 101.0 + 10 * cycle))
        assert_duplicate(second, a, "n1")
        if cycle:
            assert_duplicate(first, b, "n1")
    assert views(state)[a.key].health.state is U and views(state)[b.key].health.state is U


def test_duplicate_with_three_agents() -> None:
    a, b, c = target("a"), target("b"), target("c")
    state = fleet(a, b, c)
    assert_up(state.record(up(a, "n1", 100.0)))
    assert_duplicate(state.record(up(b, "n1", 100.5)), a, "n1")
    view = state.record(up(c, "n1", 101.0))
    assert_duplicate(view, a, "n1")
    assert b.url in view.result.message
    assert_duplicate(views(state)[b.key], a, "n1")  # already a duplicate: it stays one


def test_re_reporting_its_own_node_is_fine() -> None:
    a = target("a")
    state = fleet(a)
    for i in range(5):
        assert_up(state.record(up(a, "n1", 100.0 + i)))


def test_different_node_ids_are_fine() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    assert_up(state.record(up(b, "n2", 100.1)))


def test_a_failed_poll_of_the_real_node_does_not_hand_its_identity_over() -> None:
    """The hijack: the real node misses one poll; an impostor reporting its id must not be UP."""
    real, impostor = target("real"), target("impostor")
    state = fleet(real, impostor)
    assert_up(state.record(up(real, "n1", 100.0)))
    state.record(down(real, 105.0))
    assert_duplicate(state.record(up(impostor, "n1", 106.0)), real, "n1")
    assert_duplicate(state.record(up(real, "n1", 110.0)), impostor, "n1")


def test_an_agent_now_in_another_cluster_gives_up_its_claim() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    state.record(down(a, 105.0, Status.NODE_DOWN, Reason.CLUSTER_MISMATCH))
    assert_up(state.record(up(b, "n1", 106.0)))


@pytest.mark.parametrize("gap, duplicate", [(0.0, True), (9.99, True), (10.0, False), (25.0, False)])
def test_not_a_duplicate_after_an_interval_passed(gap: float, duplicate: bool) -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    view = state.record(up(b, "n1", 100.0 + gap))
    if duplicate:
        assert_duplicate(view, a, "n1")
    else:
        assert_up(view)


def test_a_claim_stale_for_an_interval_is_gone_until_it_is_made_again() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    assert_up(state.record(up(b, "n1", 130.0)))  # a has not answered for three intervals
    assert_duplicate(state.record(up(a, "n1", 131.0)), b, "n1")


def test_the_interval_of_the_earlier_claimant_decides() -> None:
    slow, fast = target("slow", interval=60.0), target("fast", interval=5.0)
    state = fleet(slow, fast)
    assert_up(state.record(up(slow, "n1", 100.0)))
    assert_duplicate(state.record(up(fast, "n1", 130.0)), slow, "n1")


def test_an_agent_that_reports_another_node_id_moves_its_claim() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    assert_up(state.record(up(a, "n2", 102.0)))
    assert_up(state.record(up(b, "n1", 103.0)))
    assert_duplicate(state.record(up(b, "n2", 104.0)), a, "n2")


def test_not_a_duplicate_across_clusters() -> None:
    a, b = target("a", cluster="rs0"), target("b", cluster="rs1")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    assert_up(state.record(up(b, "n1", 100.5)))
    # and the same URL in two clusters does not collide with itself either
    a2 = Target("rs1", a.url, None, a.poll, a.tls)
    state.set_targets([a, b, a2])
    assert_up(state.record(up(a2, "n9", 101.0, cluster_id="rs1")))


def test_failed_polls_claim_no_node() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    state.record(down(a, 100.0))
    assert_up(state.record(up(b, "n1", 100.5)))


def test_a_removed_target_gives_up_its_claim() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    assert_up(state.record(up(a, "n1", 100.0)))
    state.set_targets([b])
    assert_up(state.record(up(b, "n1", 101.0)))
    state.set_targets([a, b])  # a re-added reports it again: both are duplicates
    assert_duplicate(state.record(up(a, "n1", 102.0)), b, "n1")
    assert_duplicate(views(state)[b.key], a, "n1")

# --- set_targets and snapshot -----------------------------------------------------------


def test_set_targets_removal_drops_the_view_and_late_results() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    state.record(up(a, "n1", 100.0))
    state.set_targets([b])
    assert len(state) == 1
    assert set(views(state)) == {b.key}
    assert state.record(up(a, "n1", 101.0)) is None  # a poll that was in flight when a went away
    assert state.record(down(a, 102.0)) is None
    assert set(views(state)) == {b.key}


def test_set_targets_keeps_state_of_unchanged_keys_and_updates_settings() -> None:
    a = target("a")
    state = fleet(a)
    result = up(a, "n1", 100.0)
    state.record(result)
    changed = Target(a.cluster_id, a.url, "Renamed", PollSettings(30.0, 2.0), TlsSettings(min_version="1.3"))
    state.set_targets([changed])
    view = views(state)[a.key]
    assert view.target is changed
    assert view.result is result
    assert sv(view.health) == (H, 0)
    assert view.last_success == 100.25
    # the record after the change keeps the new target
    view2 = state.record(down(a, 130.0))
    assert view2 is not None and view2.target is changed


def test_readded_target_starts_fresh() -> None:
    a = target("a")
    state = fleet(a)
    state.record(up(a, "n1", 100.0))
    state.set_targets([])
    assert len(state) == 0 and state.snapshot() == []
    state.set_targets([a])
    assert views(state)[a.key] == TargetView(a)


def test_snapshot_is_a_copy() -> None:
    a, b = target("a"), target("b")
    state = fleet(a, b)
    state.record(up(a, "n1", 100.0))
    before = state.snapshot()
    before_views = {v.target.key: v for v in before}
    before.clear()
    assert len(state.snapshot()) == 2  # mutating a snapshot changes nothing
    state.record(down(a, 110.0))
    state.record(up(b, "n2", 110.0))
    # a snapshot taken earlier does not see later records
    assert before_views[a.key].result is not None and before_views[a.key].result.ok
    assert before_views[b.key].result is None
    after = {v.target.key: v for v in state.snapshot()}
    assert after[a.key].result is not None and not after[a.key].result.ok
    assert state.snapshot() is not state.snapshot()
    with pytest.raises(AttributeError):
        after[a.key].result = None  # type: ignore[misc]
