"""Flapping, Retry-After deferral and the state file, as pure units."""
from __future__ import annotations

import json
import os

from replicante_poller.config import PollSettings, TlsSettings
from replicante_poller.polling.discovery import Target
from replicante_poller.polling.health import Health, HealthPolicy, HealthState
from replicante_poller.models import AgentInfo, AgentVersion, DatastoreInfo, NodeStatus, Offset, Shard
from replicante_poller.polling.poll import PollResult
from replicante_poller.reasons import Reason, Status
from replicante_poller.polling.state import FleetState
from replicante_poller.polling.statefile import load_state, save_state

TARGET = Target("rs", "https://a:1", None, PollSettings(interval=10, timeout=1), TlsSettings())
OTHER = Target("rs", "https://b:1", None, PollSettings(interval=10, timeout=1), TlsSettings())


def up(target: Target, at: float) -> PollResult:
    return PollResult(target, Status.UP, None, "ok", at, 0.01,
                      agent=AgentInfo(AgentVersion("abc", "0.7.0", "not tainted")),
                      datastore=DatastoreInfo("Orders", "rs", "MongoDB", f"node-{target.url[-3]}", "4.0"),
                      shards=(Shard("rs0", "unknown", "arbiter", Offset("zxid", 7, True), None),),
                      cert_not_after=2e9)


def down(target: Target, at: float, retry_after: float | None = None) -> PollResult:
    return PollResult(target, Status.AGENT_DOWN, Reason.HTTP_STATUS, "HTTP 503", at, 0.01, retry_after=retry_after)


def test_flapping_after_threshold_transitions_within_the_window_and_not_after():
    policy = HealthPolicy(fall=1, rise=1, flap_window=100, flap_threshold=4)
    health = Health()
    for i, ok in enumerate([True, False, True, False, True]):
        health = health.apply(ok, policy, now=float(i))
    assert health.state is HealthState.HEALTHY and len(health.transitions) == 4
    assert health.flapping(policy)
    calm = health.apply(True, policy, now=200.0)  # the window slid past every transition
    assert not calm.flapping(policy) and calm.transitions == ()


def test_debounced_changes_do_not_count_as_flapping():
    policy = HealthPolicy(fall=3, rise=3, flap_window=100, flap_threshold=2)
    health = Health().apply(True, policy, 0)
    for i, ok in enumerate([False, True, False, True, False, True], start=1):
        health = health.apply(ok, policy, float(i))
    assert health.healthy and health.transitions == () and not health.flapping(policy)


def test_flapping_is_visible_in_the_view():
    state = FleetState(fall=1, rise=1, flap_window=100, flap_threshold=3)
    state.set_targets([TARGET])
    for i in range(4):
        view = state.record(up(TARGET, i) if i % 2 == 0 else down(TARGET, i))
    assert view.flapping


def test_retry_after_defers_up_to_the_cap():
    state = FleetState(fall=3, rise=2, max_retry_after=60)
    state.set_targets([TARGET, OTHER])
    assert state.record(down(TARGET, 1000.0, retry_after=30)).deferred_until == 1030.0
    assert state.record(down(OTHER, 1000.0, retry_after=86400)).deferred_until == 1060.0
    assert state.record(up(TARGET, 1040.0)).deferred_until is None


def test_state_file_round_trip_keeps_models_health_and_times(tmp_path):
    state = FleetState(fall=2, rise=1)
    state.set_targets([TARGET, OTHER])
    state.record(up(TARGET, 100.0))
    state.record(down(OTHER, 100.0, retry_after=5))
    save_state(str(tmp_path), state.snapshot(), clock=lambda: 123.0)
    assert not [p for p in os.listdir(tmp_path) if p != "state.json"], "no temporary file left behind"

    loaded = {v.target.key: v for v in load_state(str(tmp_path), [TARGET, OTHER])}
    original = {v.target.key: v for v in state.snapshot()}
    assert loaded == original


def replisdk_up(target: Target, at: float, status: NodeStatus) -> PollResult:
    return PollResult(target, Status.UP, None, "ok", at, 0.01,
                      agent=AgentInfo(AgentVersion("52e5746", "0.1.0", "not tainted")),
                      datastore=DatastoreInfo(None, "rs", "mongo.replica", "mongo-0", "6.0.16"),
                      shards=(Shard("mongo-0:27017", "recovering", None, Offset("milliseconds", 1728339632000), None),
                              Shard("x", "unknown", "ROLLBACK", Offset("seconds", 1), Offset("milliseconds", 5))),
                      api="replisdk", node_status=status)


def test_state_file_keeps_each_agents_generation_node_status_and_neutral_shards(tmp_path):
    state = FleetState(fall=2, rise=1)
    state.set_targets([TARGET, OTHER])
    state.record(replisdk_up(TARGET, 100.0, NodeStatus("UNKNOWN", "ARBITER")))
    state.record(replisdk_up(OTHER, 100.0, NodeStatus("JOINING_CLUSTER")))
    state.record(PollResult(OTHER, Status.AGENT_DOWN, Reason.TIMEOUT, "slow", 110.0, 5.0, api="replisdk"))
    save_state(str(tmp_path), state.snapshot())

    loaded = {v.target.key: v for v in load_state(str(tmp_path), [TARGET, OTHER])}

    assert loaded == {v.target.key: v for v in state.snapshot()}
    assert loaded[TARGET.key].api == loaded[OTHER.key].api == "replisdk"
    assert loaded[TARGET.key].result.node_status == NodeStatus("UNKNOWN", "ARBITER")


def test_a_poll_that_learned_no_generation_does_not_change_what_is_known():
    state = FleetState(fall=2, rise=1)
    state.set_targets([TARGET])
    assert state.record(replisdk_up(TARGET, 100.0, NodeStatus("HEALTHY"))).api == "replisdk"
    assert state.record(PollResult(TARGET, Status.AGENT_DOWN, Reason.CONNECT, "closed", 110.0, 0.1)).api == "replisdk"
    legacy = PollResult(TARGET, Status.AGENT_DOWN, Reason.HTTP_STATUS, "HTTP 500", 120.0, 0.1, api="legacy")
    assert state.record(legacy).api == "legacy"


def test_state_file_is_replaced_whole_never_rewritten_in_place(tmp_path):
    """A crash mid-save must leave the previous file whole: the new state goes to a new
    file renamed over the old one. A hard link to the old file sees the old bytes after
    a save; a save that rewrote the file in place would change them."""
    state = FleetState(fall=2, rise=1)
    state.set_targets([TARGET, OTHER])
    state.record(up(TARGET, 100.0))
    first = save_state(str(tmp_path), state.snapshot(), clock=lambda: 1.0)
    before = first.read_bytes()
    os.link(first, tmp_path / "previous")

    state.record(down(OTHER, 200.0))
    second = save_state(str(tmp_path), state.snapshot(), clock=lambda: 2.0)

    assert (tmp_path / "previous").read_bytes() == before
    assert second.read_bytes() != before
    assert os.stat(second).st_ino != os.stat(tmp_path / "previous").st_ino


def test_saved_targets_no_longer_known_are_dropped(tmp_path):
    state = FleetState(fall=2, rise=1)
    state.set_targets([TARGET, OTHER])
    state.record(up(TARGET, 100.0))
    save_state(str(tmp_path), state.snapshot())
    assert [v.target for v in load_state(str(tmp_path), [TARGET])] == [TARGET]


def test_restore_into_fleet_state_only_for_known_targets(tmp_path):
    old = FleetState(fall=2, rise=1)
    old.set_targets([TARGET, OTHER])
    old.record(up(TARGET, 100.0))
    save_state(str(tmp_path), old.snapshot())
    new = FleetState(fall=2, rise=1)
    new.set_targets([TARGET])
    assert new.restore(load_state(str(tmp_path), [TARGET, OTHER])) == 1
    assert new.snapshot()[0].result.ok


def test_unusable_state_files_are_set_aside(tmp_path):
    for index, text in enumerate(["{broken", json.dumps({"format": 99, "targets": []}),
                                  json.dumps({"format": 1, "targets": [{"cluster": "rs"}]}),
                                  json.dumps({"format": 1, "targets": [{"cluster": "rs", "url": "https://a:1",
                                             "health": {"state": "healthy", "streak": 0},
                                             "result": {"status": "UP", "reason": None, "message": "",
                                                        "started": 1, "duration": 1,
                                                        "datastore": {"node_id": 5}}}]})]):
        folder = tmp_path / str(index)
        folder.mkdir()
        (folder / "state.json").write_text(text)
        assert load_state(str(folder), [TARGET]) == []
        assert not (folder / "state.json").exists()
        assert [p.name for p in folder.iterdir() if p.name.startswith("state.json.unreadable-")]


def test_missing_state_file_is_a_fresh_start(tmp_path):
    assert load_state(str(tmp_path / "nothing-here"), [TARGET]) == []
